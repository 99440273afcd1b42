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
