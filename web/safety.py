"""Checks that run before any user-supplied string touches the file system.

Two rules: a job id must match ``JOB_ID_RE`` before it is joined to a path, and a server-side
path typed into a form must resolve (symlinks followed) to somewhere inside one of the
configured data roots.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

# Letters, digits, '-' and '_' only: no separators, no dots, so never '..'.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# File names inside a job directory that the web may serve (no separators, no leading dot).
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,200}$")
# Dataset record keys (the builder writes zero-padded numbers; plugins may use names): no separators.
RECORD_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,127}$")


class UnsafePath(ValueError):
    """A path or id that the web refuses to use; the message is safe to show the user."""


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise UnsafePath(f"invalid job id {job_id!r}")
    return job_id


def check_record_key(key: str) -> str:
    if not isinstance(key, str) or not RECORD_KEY_RE.match(key):
        raise UnsafePath(f"invalid record key {key!r}")
    return key


def within(path: str | os.PathLike, roots: list[str]) -> Path:
    """``path`` resolved, if it lies inside one of ``roots``; otherwise UnsafePath."""
    if not str(path).strip():
        raise UnsafePath("empty path")
    resolved = Path(os.path.expanduser(str(path))).resolve()
    for root in roots:
        root_path = Path(root).resolve()
        try:
            if os.path.commonpath([str(root_path), str(resolved)]) == str(root_path):
                return resolved
        except ValueError:  # different drives on Windows
            continue
    shown = ", ".join(roots) or "(none configured)"
    raise UnsafePath(f"{path} is outside the allowed data folders ({shown})")


def job_file(job_dir: str | os.PathLike, relative: str) -> Path:
    """A file inside a job directory named by a relative path from the URL, checked."""
    base = Path(job_dir).resolve()
    parts = [p for p in relative.split("/") if p]
    if not parts or any(not FILE_NAME_RE.match(p) for p in parts):
        raise UnsafePath(f"invalid file name {relative!r}")
    target = (base / Path(*parts)).resolve()
    if os.path.commonpath([str(base), str(target)]) != str(base):
        raise UnsafePath(f"{relative} is outside the job directory")
    return target


def complete_path(prefix: str, roots: list[str], limit: int = 30) -> list[str]:
    """Directory (and file) names that continue ``prefix``, restricted to the data roots.

    An empty prefix lists the roots themselves, so the user always has a starting point.
    """
    if not prefix.strip():
        return [r.rstrip("/") + "/" for r in roots][:limit]
    expanded = os.path.expanduser(prefix)
    head, tail = os.path.split(expanded)
    try:
        folder = within(head or "/", roots)
    except UnsafePath:
        # Still help: offer the roots that start with what was typed.
        return [r + "/" for r in roots if r.startswith(expanded)][:limit]
    if not folder.is_dir():
        return []
    out = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    for name in names:
        if name.startswith(".") or not name.startswith(tail):
            continue
        full = folder / name
        out.append(str(full) + ("/" if full.is_dir() else ""))
        if len(out) >= limit:
            break
    return out


# Host names every server answers to: the loopback names a browser on this machine uses.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# Binding to these means "every interface": they name no host a client would type.
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::", "[::]")


def trusted_hosts(configured, bound_host) -> list[str] | None:
    """The host names the app answers to (None = any, only when ``configured`` is ``"*"``).

    ``configured`` is the TRUSTED_HOSTS setting: None → the loopback names plus the address the
    server is bound to; a list (or comma-separated string) → exactly those names; ``"*"`` → no
    check (a deployment behind a proxy that checks Host itself). A name starting with '.'
    also accepts its subdomains. IPv6 addresses are written in brackets (``[::1]``)."""
    if isinstance(configured, str):
        if configured.strip() == "*":
            return None
        configured = [h for h in configured.split(",")]
    if configured is None:
        names = list(LOOPBACK_HOSTS)
        bound = str(bound_host or "").strip()
        if bound not in WILDCARD_ADDRESSES:
            names.append(f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound)
    else:
        names = list(configured)
    return sorted({n.strip().lower() for n in names if n and n.strip()})


def _host_name(host_header: str) -> str:
    """``Host`` header → host name without the port (IPv6 keeps its brackets), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header: str | None, trusted: list[str] | None) -> bool:
    """Whether a request's ``Host`` header names one of ``trusted`` (None: every host)."""
    if trusted is None:
        return True
    if not host_header:
        return False
    name = _host_name(host_header)
    for ref in trusted:
        if name == ref or (ref.startswith(".") and (name.endswith(ref) or name == ref[1:])):
            return True
    return False


# Sent with every response. The app serves only its own scripts (Plotly included, from
# /vendor/plotly.min.js), so scripts come from 'self' only, with no inline script and no eval;
# styles allow inline because Plotly writes <style> elements and style attributes while drawing,
# and the progress bars and class swatches set their width/colour inline. Images may be data:/blob:
# URLs (Plotly's PNG export, the overlay canvas).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
