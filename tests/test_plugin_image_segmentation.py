"""The generic Image Segmentation plugin (DIGITS' data extension): folders of PNG/JPEG feature
images and palette/grayscale/RGB label images the test writes -> the real dataset builder
(JobService.create_dataset) -> the LMDBs read back and compared with the arrays written;
discovery by entry point; bad inputs; one epoch of a tiny model on the engine."""

import importlib.metadata
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from caffeseg.engine.datum import bytes_to_array, parse_datum
from caffeseg.engine.lmdb_io import LmdbReader
from caffeseg.jobs import store as st
from caffeseg.jobs.dataset import DatasetInfo
from caffeseg.jobs.service import JobService, ServiceError
from caffeseg.plugin.base import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, EntryError, FormError, PluginError
from caffeseg.plugin.base import discover_plugins, get_plugin
from caffeseg.plugin.image_segmentation import ImageSegmentationPlugin
from caffeseg.plugin.image_segmentation.classes import generated_palette
from tests.jobs_fixtures import TINY_NET

H, W = 6, 8
VOC_COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]  # PASCAL VOC's first three classes
OWN_PALETTE = [(10, 20, 30), (200, 100, 50), (5, 250, 5)]  # a palette no generator makes


def rgb_of(i):
    """H x W x 3 uint8 RGB of image i: r = 10 i + x, g = 20 + 3 y, b = 200 - x - y - i."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([10 * i + x, 20 + 3 * y, 200 - x - y - i], axis=-1).astype(np.uint8)


def classes_of(i, k=3):
    """H x W class indices of image i: (x + 2 y + i) mod k."""
    y, x = np.mgrid[0:H, 0:W]
    return ((x + 2 * y + i) % k).astype(np.uint8)


def palette_png(path, indices, colours=OWN_PALETTE):
    im = Image.fromarray(indices, "P")
    flat = [v for c in colours for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))  # 256 entries: an 8-bit PNG (3 would be written 2-bit)
    im.save(path)


def write_pairs(root, names, label_kind="palette", feature_ext=".png", first=0):
    """feature/<name><ext> and label/<name>.png for image numbers first, first + 1, ..."""
    feat, lab = os.path.join(root, "feature"), os.path.join(root, "label")
    os.makedirs(feat, exist_ok=True)
    os.makedirs(lab, exist_ok=True)
    for n, name in enumerate(names, first):
        Image.fromarray(rgb_of(n), "RGB").save(os.path.join(feat, name + feature_ext))
        idx = classes_of(n)
        if label_kind == "palette":
            palette_png(os.path.join(lab, name + ".png"), idx)
        elif label_kind == "gray":
            Image.fromarray(idx, "L").save(os.path.join(lab, name + ".png"))
        else:  # rgb through a colour map
            colours = np.array(VOC_COLOURS, np.uint8)
            Image.fromarray(colours[idx], "RGB").save(os.path.join(lab, name + ".png"))
    return feat, lab


def names(n):
    return ["img%02d" % i for i in range(n)]


def read_db(folder, stage, part):
    with LmdbReader(os.path.join(folder, "%s_db" % stage, part)) as db:
        return [(k, v) for k, v in db.items()]


def build(tmp_path, values, encoding="none"):
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    job = svc.create_dataset("image_segmentation", values, "seg", encoding=encoding)
    return svc, job, DatasetInfo.read(job["dir"])


def number_of(record):
    return int(record["name"][3:])


def chw_of(i):
    return np.ascontiguousarray(rgb_of(i).transpose(2, 0, 1))  # R, G, B planes


# -- discovery ------------------------------------------------------------------------------

def test_found_through_its_entry_point():
    [ep] = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            if ep.name == "image_segmentation"]
    assert ep.value == "caffeseg.plugin.image_segmentation:ImageSegmentationPlugin"
    assert BUILTIN_PLUGINS["image_segmentation"] == ep.value  # the uninstalled checkout's fallback
    found = discover_plugins()
    assert isinstance(found.plugins["image_segmentation"], ImageSegmentationPlugin)
    assert not [b for b in found.broken if b.name == "image_segmentation"]
    plugin = get_plugin("image_segmentation")
    assert plugin.category == "Images" and plugin.title
    kinds = {f.name: f.kind for f in plugin.form_fields()}
    assert kinds["colormap_text_file"] == kinds["class_labels_file"] == "file"
    assert kinds["feature_folder"] == kinds["validation_label_folder"] == "path"


# -- building ---------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["none", "png"])
def test_palette_labels_percent_split_rgb_features(tmp_path, encoding):
    feat, lab = write_pairs(str(tmp_path / "data"), names(10))
    svc, job, info = build(tmp_path, {"feature_folder": feat, "label_folder": lab, "val_percent": 30,
                                      "class_count": 3, "channel_conversion": "none"}, encoding)
    assert info.counts == {"train": 7, "val": 3}
    assert info.feature_shape == [3, H, W] and info.feature_dtype == "uint8"
    assert info.classes == ["class 0", "class 1", "class 2"]
    assert info.palette == [list(c) for c in OWN_PALETTE]  # the label PNGs' own palette
    seen = []
    for stage in ("train", "val"):
        features, labels = read_db(job["dir"], stage, "features"), read_db(job["dir"], stage, "labels")
        records = info.records(stage)
        assert [k for k, _ in features] == [k for k, _ in labels] == [r["key"] for r in records]
        for (key, fbytes), (_, lbytes), rec in zip(features, labels, records):
            i = number_of(rec)
            seen.append((stage, i))
            assert rec["files"] == {"image": "img%02d.png" % i, "label": "img%02d.png" % i}
            feature, _ = bytes_to_array(fbytes)
            np.testing.assert_array_equal(feature, chw_of(i))
            datum = parse_datum(fbytes)
            assert datum.encoded == (encoding == "png") and (datum.data[:4] == b"\x89PNG") == (encoding == "png")
            if encoding == "png":  # the planes go to OpenCV as they are: the file's B plane is our R plane
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(datum.data))), rgb_of(i)[:, :, ::-1])
            label, _ = bytes_to_array(lbytes)
            np.testing.assert_array_equal(label, classes_of(i)[np.newaxis])
    assert sorted(i for _, i in seen) == list(range(10))  # each pair once, train and val disjoint
    assert info.info["split"] == {"by": "percent", "val_percent": 30, "seed": 0}
    # the same seed gives the same split
    again = JobService(svc.root).create_dataset("image_segmentation", info.form_values, "again")
    assert [number_of(r) for r in DatasetInfo.read(again["dir"]).records("val")] == \
        [number_of(r) for r in info.records("val")]


def test_grayscale_labels_separate_val_folders_and_L_conversion(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "train"), names(4), label_kind="gray")
    vfeat, vlab = write_pairs(str(tmp_path / "val"), ["v0", "v1"], label_kind="gray", first=20)
    # a colour pixel: Pillow's L is ITU-R 601 luma (299 R + 587 G + 114 B) / 1000
    im = rgb_of(20).copy()
    im[0, 0] = (255, 0, 0)
    im[0, 1] = (90, 90, 90)
    Image.fromarray(im, "RGB").save(os.path.join(vfeat, "v0.png"))
    svc, job, info = build(tmp_path, {
        "feature_folder": feat, "label_folder": lab, "has_val_folder": True, "val_percent": 50,
        "validation_feature_folder": vfeat, "validation_label_folder": vlab, "class_count": 3,
        "channel_conversion": "L"})
    assert info.counts == {"train": 4, "val": 2} and info.feature_shape == [1, H, W]
    assert info.palette == [list(c) for c in VOC_COLOURS]  # grayscale labels: generated (VOC's)
    assert [r["name"] for r in info.records("val")] == ["v0", "v1"]
    assert [r["folders"] for r in info.records("val")] == ["validation"] * 2
    assert sorted(number_of(r) for r in info.records("train")) == [0, 1, 2, 3]
    [(_, v0), (_, v1)] = read_db(job["dir"], "val", "features")
    v0 = bytes_to_array(v0)[0][0].astype(int)
    assert abs(v0[0, 0] - 0.299 * 255) <= 1 and v0[0, 1] == 90
    rgb = rgb_of(21).astype(float)
    luma = (299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2]) / 1000
    assert np.abs(bytes_to_array(v1)[0][0] - luma).max() <= 1
    labels = [bytes_to_array(v)[0] for _, v in read_db(job["dir"], "val", "labels")]
    np.testing.assert_array_equal(labels[1][0], classes_of(21))
    assert info.info["split"] == {"by": "folders"}


def test_rgb_labels_with_colour_map_and_class_names(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "d"), names(3), label_kind="rgb")
    cmap = tmp_path / "colormap.txt"
    cmap.write_text("0 0 0\n128 0 0\n0  128\t0\n\n")
    labels_file = tmp_path / "classes.txt"
    labels_file.write_text("background\naeroplane\nbicycle\n")
    _, job, info = build(tmp_path, {"feature_folder": feat, "label_folder": lab, "val_percent": 0,
                                    "colormap_method": "textfile", "colormap_text_file": str(cmap),
                                    "class_labels_file": str(labels_file), "channel_conversion": "RGB"})
    assert info.classes == ["background", "aeroplane", "bicycle"]
    assert info.palette == [list(c) for c in VOC_COLOURS] and info.counts["train"] == 3
    for (_, f), (_, lb), rec in zip(read_db(job["dir"], "train", "features"),
                                    read_db(job["dir"], "train", "labels"), info.records("train")):
        np.testing.assert_array_equal(bytes_to_array(f)[0], chw_of(number_of(rec)))
        np.testing.assert_array_equal(bytes_to_array(lb)[0][0], classes_of(number_of(rec)))


def test_jpeg_features_pair_with_png_labels(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "d"), ["a"], feature_ext=".jpg")
    flat = np.full((H, W, 3), (40, 120, 200), np.uint8)
    Image.fromarray(flat, "RGB").save(os.path.join(feat, "a.jpg"), quality=95)
    _, job, info = build(tmp_path, {"feature_folder": feat, "label_folder": lab, "val_percent": 0,
                                    "class_count": 3, "channel_conversion": "L"})
    [(_, f)] = read_db(job["dir"], "train", "features")
    luma = (299 * 40 + 587 * 120 + 114 * 200) / 1000
    assert np.abs(bytes_to_array(f)[0][0].astype(float) - luma).max() <= 3  # JPEG of a flat colour
    assert info.records("train")[0]["files"] == {"image": "a.jpg", "label": "a.png"}


@pytest.mark.parametrize("conversion, channels", [("L", 1), ("none", 1), ("RGB", 3)])
def test_16_bit_grayscale_features_stay_16_bit(tmp_path, conversion, channels):
    feat, lab = write_pairs(str(tmp_path / "d"), ["b"])
    deep = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000 + 7  # up to 47007: beyond 8 bits
    Image.fromarray(deep).save(os.path.join(feat, "b.png"))
    for encoding in ("none", "png"):
        _, job, info = build(tmp_path / encoding, {"feature_folder": feat, "label_folder": lab,
                                                   "val_percent": 0, "class_count": 3,
                                                   "channel_conversion": conversion}, encoding)
        [(_, f)] = read_db(job["dir"], "train", "features")
        assert info.feature_dtype == "uint16" and info.feature_shape == [channels, H, W]
        np.testing.assert_array_equal(bytes_to_array(f)[0], np.stack([deep] * channels))  # not clipped


# -- bad inputs ------------------------------------------------------------------------------

def test_form_errors_name_the_field(tmp_path):
    plugin = ImageSegmentationPlugin()
    feat, lab = write_pairs(str(tmp_path / "d"), names(2))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ({"feature_folder": str(tmp_path / "nope"), "label_folder": lab, "class_count": 3},
         "feature_folder", "does not exist"),
        ({"feature_folder": str(empty), "label_folder": lab, "class_count": 3}, "feature_folder", "holds no image"),
        ({"feature_folder": feat, "label_folder": feat, "class_count": 3}, "label_folder", "feature image folder itself"),
        ({"feature_folder": feat, "label_folder": lab}, "class_count", "required without a class labels file"),
        ({"feature_folder": feat, "label_folder": lab, "class_count": 3, "has_val_folder": True},
         "validation_feature_folder", "required with 'Separate validation images'"),
        ({"feature_folder": feat, "label_folder": lab, "class_count": 3, "ignore_label": 2},
         "ignore_label", "is one of the 3 classes"),
        ({"feature_folder": feat, "label_folder": lab, "colormap_method": "textfile"},
         "colormap_text_file", "required with 'From text file'"),
        ({"feature_folder": feat, "label_folder": lab, "colormap_text_file": str(tmp_path / "no.txt")},
         "colormap_text_file", "does not exist"),
    ]
    for values, field, text in cases:
        with pytest.raises(FormError) as err:
            plugin.validate(values)
        assert field in err.value.errors and text in err.value.errors[field], (values, err.value.errors)


@pytest.mark.parametrize("content, text", [
    ("0 0 0\n300 0 0\n", "line 2: expected three integers 0..255"),
    ("0 0 0\n\n1 1 1\n", "line 2 is empty"),
    ("0 0 0\n0 0 0\n", "line 2: colour 0 0 0 is already class 0"),
    ("0 0\n", "line 1: expected three integers"),
])
def test_bad_colour_map_file(tmp_path, content, text):
    feat, lab = write_pairs(str(tmp_path / "d"), names(1), label_kind="rgb")
    cmap = tmp_path / "cmap.txt"
    cmap.write_text(content)
    with pytest.raises(FormError) as err:
        ImageSegmentationPlugin().validate({"feature_folder": feat, "label_folder": lab,
                                            "colormap_method": "textfile", "colormap_text_file": str(cmap)})
    message = err.value.errors["colormap_text_file"]
    assert str(cmap) in message and text in message


def test_class_files_that_disagree(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "d"), names(1), label_kind="rgb")
    cmap, names_file = tmp_path / "cmap.txt", tmp_path / "names.txt"
    cmap.write_text("0 0 0\n128 0 0\n0 128 0\n")
    names_file.write_text("background\nobject\n")
    with pytest.raises(FormError) as err:
        ImageSegmentationPlugin().validate({"feature_folder": feat, "label_folder": lab, "colormap_method": "textfile",
                                            "colormap_text_file": str(cmap), "class_labels_file": str(names_file)})
    assert "names 2 classes but the colour map file" in err.value.errors["class_labels_file"]
    with pytest.raises(ServiceError) as err:  # through the service the field comes back too
        JobService(str(tmp_path / "jobs")).create_dataset(
            "image_segmentation", {"feature_folder": feat, "label_folder": lab, "class_count": 5,
                                   "class_labels_file": str(names_file)}, "x")
    assert "class_count" in err.value.field_errors


def _bomb_png(path, width, height):
    """A valid PNG header announcing width x height 8-bit gray pixels, with a few bytes of data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                 + chunk(b"IEND", b""))


def test_bad_entries_are_skipped_with_the_file_named(tmp_path):
    root = str(tmp_path / "d")
    feat, lab = write_pairs(root, names(9))
    # img00: label of another size
    palette_png(os.path.join(lab, "img00.png"), np.zeros((H + 1, W), np.uint8))
    # img01: a palette index beyond the 3 classes at x=5, y=2
    idx = classes_of(1)
    idx[2, 5] = 7
    palette_png(os.path.join(lab, "img01.png"), idx)
    # img02: another palette
    palette_png(os.path.join(lab, "img02.png"), classes_of(2), colours=VOC_COLOURS)
    # img03: a decompression bomb (100000 x 100000 announced)
    _bomb_png(os.path.join(feat, "img03.png"), 100000, 100000)
    # img04: an RGB label without a colour map
    Image.fromarray(rgb_of(4), "RGB").save(os.path.join(lab, "img04.png"))
    # img05: truncated feature file
    data = open(os.path.join(feat, "img05.png"), "rb").read()
    open(os.path.join(feat, "img05.png"), "wb").write(data[:60])
    # names without a partner, and a name with two extensions
    Image.fromarray(rgb_of(0), "RGB").save(os.path.join(feat, "lonely.png"))
    palette_png(os.path.join(lab, "orphan.png"), classes_of(0))
    Image.fromarray(rgb_of(6), "RGB").save(os.path.join(feat, "img06.jpg"))
    _, job, info = build(tmp_path, {"feature_folder": feat, "label_folder": lab, "val_percent": 0, "class_count": 3})
    assert sorted(number_of(r) for r in info.records("train")) == [7, 8]
    messages = {os.path.basename(s["file"]): s["message"] for s in info.info["skipped"]}
    label = lambda n: os.path.join(lab, n)  # noqa: E731
    assert messages["img00.png"].startswith(label("img00.png")) and "is 8 x 7 pixels but its feature image" in messages["img00.png"]
    assert "label value 7 at x=5, y=2 is outside the 3 classes (0..2)" in messages["img01.png"] \
        and "set 'Ignore label'" in messages["img01.png"]
    assert label("img02.png") in messages["img02.png"] and "palette differs" in messages["img02.png"]
    bomb = [s["message"] for s in info.info["skipped"] if s["file"] == os.path.join(feat, "img03.png")]
    assert bomb and "img03.png" in bomb[0] and ("pixels is more than" in bomb[0] or "decompression bomb" in bomb[0])
    assert "a label image in mode RGB; labels must be single-channel" in messages["img04.png"]
    assert os.path.join(feat, "img05.png") in [s["file"] for s in info.info["skipped"]]
    assert "no label image lonely.* in %s" % lab in messages["lonely.png"]
    assert "no feature image orphan.* in %s" % feat in messages["orphan.png"]
    assert "holds img06.jpg and img06.png: which one is meant is unclear" in messages["img06.jpg"]
    assert len(info.info["skipped"]) == 9  # the label img06.png is not reported as a second problem


def test_ignore_label_and_small_pixel_limit(tmp_path, monkeypatch):
    feat, lab = write_pairs(str(tmp_path / "d"), names(2), label_kind="gray")
    idx = classes_of(0)
    idx[0, :] = 255
    Image.fromarray(idx, "L").save(os.path.join(lab, "img00.png"))
    plugin, values = ImageSegmentationPlugin(), {"feature_folder": feat, "label_folder": lab, "class_count": 3,
                                                 "ignore_label": 255, "val_percent": 0}
    values = plugin.validate(values)
    entry = plugin.itemize(values).stages["train"][0]
    np.testing.assert_array_equal(plugin.encode(entry, values).label[0], idx)
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(H * W - 1))
    with pytest.raises(EntryError) as err:
        plugin.encode(entry, values)
    assert str(err.value).startswith(os.path.join(feat, "img00.png")) and "CAFFESEG_MAX_IMAGE_PIXELS" in str(err.value)


def test_unknown_colour_in_rgb_label(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "d"), names(1), label_kind="rgb")
    rgb = np.array(VOC_COLOURS, np.uint8)[classes_of(0)]
    rgb[4, 3] = (1, 2, 3)
    Image.fromarray(rgb, "RGB").save(os.path.join(lab, "img00.png"))
    cmap = tmp_path / "cmap.txt"
    cmap.write_text("".join("%d %d %d\n" % c for c in VOC_COLOURS))
    plugin = ImageSegmentationPlugin()
    values = plugin.validate({"feature_folder": feat, "label_folder": lab, "colormap_method": "textfile",
                              "colormap_text_file": str(cmap), "val_percent": 0})
    with pytest.raises(EntryError) as err:
        plugin.encode(plugin.itemize(values).stages["train"][0], values)
    assert "%s: 1 pixel(s) have a colour that is not in the colour map file, e.g. (1, 2, 3) at x=3, y=4" \
        % os.path.join(lab, "img00.png") == str(err.value)


def test_no_pair_at_all(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "d"), ["a"])
    os.rename(os.path.join(lab, "a.png"), os.path.join(lab, "b.png"))
    plugin = ImageSegmentationPlugin()
    values = plugin.validate({"feature_folder": feat, "label_folder": lab, "class_count": 3})
    with pytest.raises(PluginError) as err:
        plugin.itemize(values)
    assert "no feature image in %s has a label image of the same name in %s" % (feat, lab) in str(err.value)


def test_generated_palette_is_vocs():
    assert generated_palette(9) == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
                                    (128, 0, 128), (0, 128, 128), (128, 128, 128), (64, 0, 0)]


# -- a model trained on it ---------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_one_epoch_of_a_tiny_model(tmp_path):
    feat, lab = write_pairs(str(tmp_path / "d"), names(6))
    svc, dataset, info = build(tmp_path, {"feature_folder": feat, "label_folder": lab, "val_percent": 34,
                                          "class_count": 3})
    assert info.counts == {"train": 4, "val": 2}
    [job] = svc.create_model({"dataset_id": dataset["id"], "network_text": TINY_NET, "epochs": 1,
                              "base_lr": 0.01, "set_num_output": True, "random_seed": 1})
    status = svc.train(job["id"], evaluate=True)
    log = open(os.path.join(job["dir"], "log.txt")).read()
    assert status == st.DONE, log
    series = svc.metrics(job["id"])["series"]
    assert [r[0] for r in series if r[1] == "loss" and r[3] == "train"] == [1, 2]
    train_val = open(os.path.join(job["dir"], "train_val.prototxt")).read()
    assert "num_output: 3" in train_val  # the dataset's class count
    table = svc.evaluation(job["id"])
    assert table is not None and table["count"] == 2, log
    result = svc.infer(job["id"], record="00000000")["results"][0]
    assert result["class_map"].shape == (H, W)
    # the record's own feature file, uploaded, is read in the order the dataset stored (R, G, B)
    name = DatasetInfo.read(dataset["dir"]).records("val")[0]["files"]["image"]
    upload = svc.infer(job["id"], image_path=os.path.join(feat, name))["results"][0]
    np.testing.assert_array_equal(upload["class_map"], result["class_map"])
    assert json.load(open(os.path.join(dataset["dir"], "dataset.json")))["plugin"]["id"] == "image_segmentation"


# -- the web, unchanged, builds its form and the dataset --------------------------------------

def test_the_web_form_builds_it_without_any_web_change(tmp_path):
    from caffeseg.web import create_app
    data = tmp_path / "data"
    feat, lab = write_pairs(str(data), names(4))
    app = create_app({"DATA_DIR": str(data), "DATA_ROOTS": [str(data)], "WTF_CSRF_ENABLED": False,
                      "START_WORKER": False})
    client, svc = app.test_client(), app.extensions["caffeseg_backend"].service
    assert "/datasets/new/image_segmentation" in client.get("/").get_data(as_text=True)
    html = client.get("/datasets/new/image_segmentation").get_data(as_text=True)
    assert all('name="%s"' % f in html for f in ("feature_folder", "label_folder", "colormap_method",
                                                 "class_labels_file", "ignore_label"))
    form = {"feature_folder": feat, "label_folder": lab, "val_percent": "25", "channel_conversion": "none",
            "colormap_method": "label", "class_count": "3", "seed": "0", "encoding": "png",
            "encoder_batch_size": "32", "encoder_threads": "1", "db_backend": "lmdb", "enforce_same_shape": "y",
            "dataset_name": "web seg"}
    bad = client.post("/datasets/new/image_segmentation", data=dict(form, label_folder=feat))
    assert bad.status_code == 400 and "is the feature image folder itself" in bad.get_data(as_text=True)
    resp = client.post("/datasets/new/image_segmentation", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    job_id = resp.headers["Location"].rsplit("/", 1)[1]
    assert svc.scheduler.step() == [job_id]
    for thread in list(svc.scheduler._building.values()):
        thread.join(60)
    job = svc.show(job_id)
    assert job["status"] == "Done", open(os.path.join(job["dir"], "log.txt")).read()
    info = DatasetInfo.read(job["dir"])
    assert info.counts == {"train": 3, "val": 1} and info.info["feature"]["storage"] == "png"
    assert client.get("/datasets/%s" % job_id).status_code == 200
    png = client.get("/datasets/%s/records/train/0/feature.png" % job_id)
    assert png.status_code == 200 and png.data[:4] == b"\x89PNG"
    # the JSON API: the plugin's fields, and a dataset from JSON values
    [listed] = [p for p in client.get("/api/plugins").get_json() if p["id"] == "image_segmentation"]
    assert {f["name"]: f["kind"] for f in listed["fields"]}["class_labels_file"] == "file"
    resp = client.post("/api/datasets", json={"plugin": "image_segmentation", "values": {
        "feature_folder": feat, "label_folder": lab, "class_count": 3, "val_percent": 0},
        "options": {"dataset_name": "api seg"}}, headers={"X-Requested-With": "t"})
    assert resp.status_code == 201, resp.get_data(as_text=True)


def test_worker_processes_build_the_same_dataset(tmp_path):
    """encode runs in forked workers (the plugin and its entries are pickled): same LMDBs."""
    feat, lab = write_pairs(str(tmp_path / "d"), names(6))
    values = {"feature_folder": feat, "label_folder": lab, "val_percent": 34, "class_count": 3}
    svc = JobService(str(tmp_path / "jobs"), backend="engine")
    inline = svc.create_dataset("image_segmentation", values, "inline")
    forked = svc.create_dataset("image_segmentation", values, "forked", workers=2, executor="process")
    for stage in ("train", "val"):
        for part in ("features", "labels"):
            assert read_db(inline["dir"], stage, part) == read_db(forked["dir"], stage, part)


def test_class_files_outside_the_data_roots_are_refused_by_form_and_api(tmp_path):
    # a `file` field is a server path: /etc/passwd must not become class names on the dataset page
    from caffeseg.web import create_app
    data = tmp_path / "data"
    feat, lab = write_pairs(str(data), names(4))
    outside = tmp_path / "secret.txt"
    outside.write_text("root\ndaemon\nbin\n")
    app = create_app({"DATA_DIR": str(data), "DATA_ROOTS": [str(data)], "WTF_CSRF_ENABLED": False,
                      "START_WORKER": False})
    client = app.test_client()
    form = {"feature_folder": feat, "label_folder": lab, "val_percent": "25", "channel_conversion": "none",
            "colormap_method": "label", "class_count": "3", "seed": "0", "encoding": "none",
            "encoder_batch_size": "32", "encoder_threads": "1", "db_backend": "lmdb", "enforce_same_shape": "y",
            "dataset_name": "x", "class_labels_file": str(outside)}
    page = client.post("/datasets/new/image_segmentation", data=form)
    assert page.status_code == 400 and "outside" in page.get_data(as_text=True)
    resp = client.post("/api/datasets", json={"plugin": "image_segmentation", "values": {
        "feature_folder": feat, "label_folder": lab, "class_count": 3, "class_labels_file": str(outside)},
        "options": {"dataset_name": "api"}}, headers={"X-Requested-With": "t"})
    assert resp.status_code == 400 and "class_labels_file" in resp.get_data(as_text=True)
    assert app.extensions["caffeseg_backend"].service.list_jobs("dataset") == []
