"""The plugin-agnostic dataset builder with a toy plugin: keys, mean, atomicity, workers."""

import json
import os

import numpy as np
import pytest

from caffeseg.engine.blobproto import read_binaryproto
from caffeseg.engine.datum import bytes_to_array
from caffeseg.engine.lmdb_io import LmdbReader
from caffeseg.jobs import dataset as ds_mod
from caffeseg.jobs.dataset import DatasetError, build_dataset, load_dataset_info
from caffeseg.plugin.base import (DataPlugin, EncodedRecord, Entry, EntryError, FormField, Itemization)


class ToyPlugin(DataPlugin):
    """n entries; entry i is a 3 x 4 x 5 uint16 ramp + 7i, label = i % 3 everywhere."""

    id, title = "toy", "Toy"

    def __init__(self, n=10, bad=(), crash_at=None):
        self.n, self.bad, self.crash_at = n, set(bad), crash_at

    def form_fields(self):
        return [FormField("val_percent", "% for validation", "int", default=20, min=0, max=100)]

    def itemize(self, values):
        entries = [Entry("train", {"index": i}, i) for i in range(self.n)]
        n_val = self.n * values["val_percent"] // 100
        return Itemization(stages={"train": entries[n_val:],
                                   "val": [Entry("val", e.source, e.payload) for e in entries[:n_val]]},
                           skipped=[{"file": "toy/missing", "message": "toy/missing: no image"}],
                           split={"by": "index"})

    def encode(self, entry, values):
        i = entry.payload
        if i == self.crash_at:
            raise RuntimeError("injected crash at entry %d" % i)
        if i in self.bad:
            raise EntryError("toy/%d.raw: unreadable" % i, source="toy/%d.raw" % i)
        feature = np.arange(60, dtype=np.int64).reshape(3, 4, 5) * 1000 + i * 7 + 5000
        return EncodedRecord(feature=feature.astype(np.uint16),
                             label=np.full((4, 5), i % 3, np.uint8), meta={"source": "toy/%d" % i})

    def class_labels(self, values):
        return ["a", "b", "c"]

    def palette(self, values):
        return [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def _db(path):
    with LmdbReader(path) as db:
        return [(k, bytes_to_array(v)[0]) for k, v in db.items()]


@pytest.mark.parametrize("encoding", ["none", "png"])
def test_keys_records_mean_and_json(tmp_path, encoding):
    events = []
    out = str(tmp_path / "ds")
    info = build_dataset(ToyPlugin(), {}, out, encoding=encoding, progress=events.append)
    assert info["stages"]["train"]["count"] == 8 and info["stages"]["val"]["count"] == 2
    assert info["feature"] == {"shape": [3, 4, 5], "dtype": "uint16",
                               "storage": "png" if encoding == "png" else "float_data"}
    assert info["label"]["dtype"] == "uint8" and info["classes"] == ["a", "b", "c"]
    assert info["skipped_count"] == 1 and info["form_values"] == {"val_percent": 20}
    train_f, train_l = _db(os.path.join(out, "train_db", "features")), \
        _db(os.path.join(out, "train_db", "labels"))
    assert [k for k, _ in train_f] == [k for k, _ in train_l] == ["%08d" % i for i in range(8)]
    toy = ToyPlugin()
    for (key, f), (_, lab), rec in zip(train_f, train_l, info["records"]["train"]):
        i = int(rec["source"].split("/")[1])
        expected = toy.encode(Entry("train", {}, i), {})
        np.testing.assert_array_equal(f, expected.feature)  # values up to 64000+: exact
        np.testing.assert_array_equal(lab[0], expected.label)
        assert rec["key"] == key
    feats = np.stack([f.astype(np.float64) for _, f in train_f])
    mean = read_binaryproto(os.path.join(out, "mean.binaryproto"))
    assert mean.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(mean[0], feats.mean(0), rtol=1e-7)
    assert json.load(open(os.path.join(out, "dataset.json"))) == load_dataset_info(out)
    assert open(os.path.join(out, "status")).read().strip() == "done"
    encode = [e for e in events if e["phase"] == "encode"]
    assert encode[-1]["done_all"] == encode[-1]["total_all"] == 10
    assert events[-1]["phase"] == "finish"


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_workers_give_the_same_dataset(tmp_path, executor):
    one = build_dataset(ToyPlugin(n=12, bad=[5]), {}, str(tmp_path / "a"), workers=1)
    many = build_dataset(ToyPlugin(n=12, bad=[5]), {}, str(tmp_path / "b"), workers=2,
                         executor=executor)
    assert one["records"] == many["records"]
    for stage in ("train", "val"):
        for what in ("features", "labels"):
            a = _db(str(tmp_path / "a" / ("%s_db" % stage) / what))
            b = _db(str(tmp_path / "b" / ("%s_db" % stage) / what))
            assert [k for k, _ in a] == [k for k, _ in b]
            for (_, x), (_, y) in zip(a, b):
                np.testing.assert_array_equal(x, y)


def test_skipped_entries_are_logged_and_counted(tmp_path):
    lines = []
    out = str(tmp_path / "ds")
    info = build_dataset(ToyPlugin(bad=[3, 4]), {}, out, log=lines.append)
    assert info["skipped_count"] == 3
    assert {s["file"] for s in info["skipped"]} == {"toy/missing", "toy/3.raw", "toy/4.raw"}
    assert info["stages"]["train"]["count"] == 6
    log_text = open(os.path.join(out, "build.log")).read()
    assert "toy/3.raw: unreadable" in log_text and "3 skipped" in log_text
    assert lines[-1].endswith("3 skipped")


def _leftovers(tmp_path):
    return [n for n in os.listdir(tmp_path) if n.startswith(".ds")]


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_build_leaves_nothing_marked_done(tmp_path, workers):
    out = str(tmp_path / "ds")
    with pytest.raises(RuntimeError, match="injected crash"):
        build_dataset(ToyPlugin(crash_at=6), {}, out, workers=workers)
    assert not os.path.exists(out) and _leftovers(tmp_path) == []
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset_info(out)


def test_crash_while_finishing_leaves_nothing(tmp_path, monkeypatch):
    out = str(tmp_path / "ds")

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ds_mod, "_move_into_place", boom)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(ToyPlugin(), {}, out)
    assert not os.path.exists(out) and _leftovers(tmp_path) == []


def test_unfinished_folder_is_not_a_dataset(tmp_path):
    out = tmp_path / "ds"
    build_dataset(ToyPlugin(), {}, str(out))
    os.remove(out / "status")
    with pytest.raises(DatasetError, match="not a finished dataset"):
        load_dataset_info(str(out))


def test_all_entries_bad_fails(tmp_path):
    out = str(tmp_path / "ds")
    with pytest.raises(DatasetError, match="no usable training record: 5 entries skipped"):
        build_dataset(ToyPlugin(n=4, bad=range(4)), {"val_percent": 0}, out)
    assert not os.path.exists(out) and _leftovers(tmp_path) == []


def test_refuses_to_overwrite_and_bad_encoding(tmp_path):
    out = tmp_path / "ds"
    build_dataset(ToyPlugin(), {}, str(out))
    with pytest.raises(DatasetError, match="is not empty"):
        build_dataset(ToyPlugin(), {}, str(out))
    info = build_dataset(ToyPlugin(n=5), {}, str(out), overwrite=True)
    assert load_dataset_info(str(out))["stages"] == info["stages"]
    with pytest.raises(DatasetError, match="encoding must be one of none, png, jpg"):
        build_dataset(ToyPlugin(), {}, str(tmp_path / "x"), encoding="webp")
    with pytest.raises(DatasetError, match="label encoding must be one of none, png"):
        build_dataset(ToyPlugin(), {}, str(tmp_path / "x"), label_encoding="jpg")


def test_png_refuses_values_it_cannot_hold(tmp_path):
    class Negative(ToyPlugin):
        def encode(self, entry, values):
            rec = super().encode(entry, values)
            rec.feature = rec.feature.astype(np.int32) - 70000
            return rec
    with pytest.raises(DatasetError, match="no usable training record"):
        build_dataset(Negative(n=3), {"val_percent": 0}, str(tmp_path / "ds"), encoding="png")
    info = build_dataset(Negative(n=3), {"val_percent": 0}, str(tmp_path / "ok"))
    assert info["feature"]["dtype"] == "int32"
