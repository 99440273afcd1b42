"""evaluation_masks.npz is written atomically (review finding 11): a save that fails half-way
leaves the previous file whole, never a torn zip that later reads as corrupt."""
from __future__ import annotations

import os

import numpy as np
import pytest

from caffeseg.jobs import evaluate as ev
from tests.clinical_fixtures import OracleModel, make_dataset, make_release


def test_a_failed_mask_save_leaves_the_previous_masks_whole(tmp_path, monkeypatch):
    root = str(tmp_path / "release")
    make_release(root, cases=["SC-N-2", "SC-HF-I-1"], slices=2)
    ds = str(tmp_path / "built")
    make_dataset(root, ds, val_percent=50)
    out = str(tmp_path / "evaluation.json")
    ev.evaluate(OracleModel(ds), ds, out)
    masks = ev.masks_path(out)
    with np.load(masks) as stored:
        before = {k: stored[k].copy() for k in stored.files}
    assert before

    real_save = np.savez_compressed

    def disk_full_half_way(file, **arrays):  # writes part of the zip, then fails as a full disk would
        if isinstance(file, (str, os.PathLike)):
            with open(file, "wb") as f:
                f.write(b"PK\x03\x04 torn")
        else:
            file.write(b"PK\x03\x04 torn")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full_half_way)
    with pytest.raises(OSError, match="No space left"):
        ev.evaluate(OracleModel(ds), ds, out)
    monkeypatch.setattr(np, "savez_compressed", real_save)
    with np.load(masks) as stored:
        assert sorted(stored.files) == sorted(before)
        for key in before:
            assert np.array_equal(stored[key], before[key])
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]
