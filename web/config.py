"""Default settings of the web app and how a caller overrides them.

``create_app(config)`` accepts a dict of these settings. Every key can also come from the
environment as ``CAFFESEG_<KEY>``; explicit config wins over the environment, which wins over
these defaults.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from caffeseg.jobs.paths import default_data_dir

DEFAULTS = {
    # Root of everything the app owns: jobs live in DATA_DIR/jobs unless JOBS_DIR says otherwise.
    # None = the CLI's default too (jobs.paths.default_data_dir: $CAFFESEG_DATA or ~/.caffeseg).
    "DATA_DIR": None,
    "JOBS_DIR": None,
    # Folders the server-side path fields may point into (autocomplete and validation).
    # None = DATA_DIR only.
    "DATA_ROOTS": None,
    # Uploads (test images, Python layer files) are refused above this size.
    "MAX_CONTENT_LENGTH": 64 * 1024 * 1024,
    # Uploaded pretrained models (prototxt + caffemodel) may be larger: VGG16 alone is 528 MB.
    "MAX_PRETRAINED_UPLOAD": 1024 * 1024 * 1024,
    # Where the Prepare button downloads a known pretrained model from instead of its published
    # address: {name: url} (env: CAFFESEG_PRETRAINED_MIRRORS="name=url,name=url").
    "PRETRAINED_MIRRORS": {},
    # A Python layer file is code that runs inside the server's training process.
    "ALLOW_PYTHON_LAYER_UPLOAD": True,
    "WTF_CSRF_ENABLED": True,
    # Seconds between the model page's metric polls.
    "POLL_INTERVAL_S": 2.0,
    # Run queued trainings inside the web process (false when a `caffeseg worker` runs them).
    "START_WORKER": True,
    "HOST": "127.0.0.1",
    "PORT": 5000,
    # Host names the app answers to (the Host header; DNS-rebinding guard). None = localhost,
    # 127.0.0.1, [::1] and HOST; a list (env: comma-separated) = exactly those; "*" = any.
    "TRUSTED_HOSTS": None,
    # Images (uploads, dataset slices) with more pixels than this are refused from their header,
    # before any decoding (decompression bombs). 4096×4096 is far above 1024×1024 MRI slices.
    "MAX_IMAGE_PIXELS": 4096 * 4096,
    # DIGITS' login (web.users): a user name in a signed cookie; off = the local single user.
    "LOGIN": False,
    # With LOGIN: a shared secret the login form also asks for (None = a name is enough, as DIGITS).
    "LOGIN_SECRET": None,
    # The request header an authenticating proxy puts the user in (e.g. REMOTE_USER); None = unused.
    "REMOTE_USER_HEADER": None,
}

_BOOL_KEYS = {"ALLOW_PYTHON_LAYER_UPLOAD", "WTF_CSRF_ENABLED", "TESTING", "START_WORKER", "LOGIN"}


def _from_env(key: str):
    raw = os.environ.get(f"CAFFESEG_{key}")
    if raw is None:
        return None
    if key in _BOOL_KEYS:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if key == "DATA_ROOTS":
        return [p for p in raw.split(os.pathsep) if p]
    if key == "PRETRAINED_MIRRORS":
        pairs = [item.split("=", 1) for item in raw.split(",") if "=" in item]
        return {name.strip(): url.strip() for name, url in pairs}
    if key == "TRUSTED_HOSTS":
        return raw.strip() if raw.strip() == "*" else [h.strip() for h in raw.split(",") if h.strip()]
    if key in ("MAX_CONTENT_LENGTH", "MAX_PRETRAINED_UPLOAD", "PORT", "MAX_IMAGE_PIXELS"):
        return int(raw)
    return raw


def _as_dict(config) -> dict:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TypeError("create_app(config): config is a dict of settings (e.g. {'DATA_DIR': ...}), not %s"
                        % type(config).__name__)
    return dict(config)


def resolve(config=None) -> dict:
    """The effective settings: defaults < environment < ``config``; paths made absolute."""
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        env = _from_env(key)
        if env is not None:
            settings[key] = env
    settings.update({k: v for k, v in _as_dict(config).items() if v is not None or k not in DEFAULTS})
    data_dir = Path(settings["DATA_DIR"] or default_data_dir()).expanduser().resolve()
    settings["DATA_DIR"] = str(data_dir)
    jobs_dir = settings.get("JOBS_DIR") or data_dir / "jobs"
    settings["JOBS_DIR"] = str(Path(jobs_dir).expanduser().resolve())
    roots = settings.get("DATA_ROOTS") or [str(data_dir)]
    if isinstance(roots, (str, Path)):
        roots = [roots]
    settings["DATA_ROOTS"] = [str(Path(r).expanduser().resolve()) for r in roots]
    if not settings.get("SECRET_KEY"):
        settings["SECRET_KEY"] = os.environ.get("CAFFESEG_SECRET_KEY") or secrets.token_hex(32)
    return settings
