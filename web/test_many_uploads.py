"""Where Test Many stages uploaded images: ``DATA_DIR/test-uploads/<random>/``, the one place
besides the data roots a Test Many request may read from (the view saves there, the backend
adds the folder to the request's roots)."""
from __future__ import annotations

import os
import secrets


def upload_root(data_dir: str) -> str:
    """The folder of all staged uploads (created when missing)."""
    path = os.path.join(data_dir, "test-uploads")
    os.makedirs(path, exist_ok=True)
    return path


def stage_uploads(data_dir: str, files) -> list[str]:
    """Save uploaded files (werkzeug ``FileStorage``) in a fresh folder of ``upload_root``; their
    paths, in order (a number prefix keeps two uploads of one name apart)."""
    folder = os.path.join(upload_root(data_dir), secrets.token_hex(6))
    os.makedirs(folder)
    paths = []
    for index, storage in enumerate(files):
        name = os.path.basename(storage.filename or "upload").replace("\x00", "") or "upload"
        path = os.path.join(folder, "%03d_%s" % (index, name))
        storage.save(path)
        paths.append(path)
    return paths
