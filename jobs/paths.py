"""Safe path handling for the jobs directory.

A job id is validated before it is ever joined to a path, so an id coming from a URL or a
command line can never escape the jobs root. Files are written atomically (temp file in the
same folder + ``os.replace``) so a crash leaves either the old or the new content, never half.
"""
import contextlib
import datetime
import json
import os
import re
import secrets
import tempfile

JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
DB_NAME = "caffeseg.sqlite"


class JobPathError(ValueError):
    """A job id or a path that is not allowed."""


def new_job_id(now=None):
    """DIGITS-style id: ``YYYYMMDD-HHMMSS-xxxx`` (UTC time + 4 random hex digits)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def check_job_id(job_id):
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise JobPathError("invalid job id %r (letters, digits, '-' and '_' only)" % (job_id,))
    return job_id


def job_dir(root, job_id):
    """The folder of one job inside ``root`` (the id is validated first)."""
    return os.path.join(os.path.abspath(root), check_job_id(job_id))


def inside(root, path):
    """``path`` resolved, if it lies inside ``root``; otherwise JobPathError."""
    root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root, path))
    if full != root and not full.startswith(root + os.sep):
        raise JobPathError("path %r is outside %s" % (path, root))
    return full


DATA_ENV = "CAFFESEG_DATA"


def default_data_dir():
    """The one default data root of the CLI, the web app and ``make serve``: ``$CAFFESEG_DATA``,
    else ``~/.caffeseg`` (jobs in ``jobs/``, the sample phantom in ``sample/``)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(DATA_ENV) or "~/.caffeseg"))


@contextlib.contextmanager
def atomic_output(path, mode=None):
    """A binary file that becomes ``path`` only when the block ends without error: written under a
    private temporary name in the same folder (concurrent writers never share it), then renamed
    into place, so readers never see a partial file. ``mode`` sets its permission bits."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path, data):
    """Write ``data`` (str or bytes) to ``path`` so that readers never see a partial file."""
    with atomic_output(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path, default=None):
    """The JSON content of ``path``, or ``default`` when it is missing or not JSON (a job's own
    small files: job.json, info.json, manifests; written atomically, so whole or absent)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default
