"""Hardening of image input (issue 16): decompression bombs refused from the header (item 3),
one DICOM reading path with the Modality LUT / rescale for datasets and inference (item 20), an
8-bit slice among 16-bit ones (item 12) and a zero-area contour (item 13) skipped with a reason."""
from __future__ import annotations

import json
import struct
import time
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from caffeseg.jobs import infer
from caffeseg.jobs.dataset import build_dataset
from caffeseg.plugin.base import EntryError
from caffeseg.plugin.images import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLarge, check_image_file, read_image
from caffeseg.plugin.sunnybrook import SunnybrookPlugin, contours, dicom


def _png_bomb(path, side):
    """A real PNG of side×side 8-bit zeros: a few hundred KiB that decode to side² bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer, row = zlib.compressobj(9), b"\0" * (side + 1)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _tiff_bomb(path, side):
    import tifffile
    tile = np.zeros((512, 512), np.uint16)
    n = (side // 512) ** 2
    tifffile.imwrite(str(path), data=(tile for _ in range(n)), shape=(side, side), dtype=np.uint16,
                     tile=(512, 512), compression="zlib")
    return path


# -- item 3 ------------------------------------------------------------------------------------

def test_png_and_tiff_bombs_are_refused_from_the_header(tmp_path):
    side = 8192  # 64 Mpx, four times the 16.8 Mpx default
    png = _png_bomb(tmp_path / "bomb.png", side)
    tif = _tiff_bomb(tmp_path / "bomb.tif", side)
    assert png.stat().st_size < 1 << 20 and tif.stat().st_size < 4 << 20
    for path in (png, tif):
        start = time.monotonic()
        with pytest.raises(infer.InferError, match=r"8192×8192 pixels is more than this server reads"):
            infer.load_image(str(path))
        assert time.monotonic() - start < 1.0, "the pixels were decoded before the size check"


def test_the_limit_is_configurable_and_normal_images_pass(tmp_path, monkeypatch):
    import cv2
    small = tmp_path / "ok.png"
    cv2.imwrite(str(small), (np.arange(64 * 48) % 65536).astype(np.uint16).reshape(48, 64))
    assert read_image(str(small)).shape == (1, 48, 64)
    assert DEFAULT_MAX_IMAGE_PIXELS >= 4096 * 4096
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(64 * 48 - 1))
    with pytest.raises(ImageTooLarge, match="CAFFESEG_MAX_IMAGE_PIXELS"):
        check_image_file(str(small))


def test_a_dicom_announcing_a_huge_slice_is_refused_before_its_pixels_are_read(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows, ds.Columns = 20000, 20000
    path = tmp_path / "huge.dcm"
    ds.save_as(str(path))
    with pytest.raises(EntryError, match=r"huge.dcm: 20000×20000 pixels is more than this server reads"):
        dicom.read_slice(str(path))
    with pytest.raises(infer.InferError, match="20000×20000"):
        infer.load_image(str(path))


def test_a_dataset_folder_with_a_huge_slice_skips_it_with_the_reason(tmp_path, phantom_release, monkeypatch):
    images, contour_dir = phantom_release
    plugin = SunnybrookPlugin()
    values = {"image_folder": str(images), "contour_folder": str(contour_dir), "val_percent": 0}
    first = plugin.itemize(plugin.validate(values)).stages["train"][0].payload["image"]
    ds = pydicom.dcmread(first)
    side = int(ds.Rows)
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(side * side - 1))  # every slice is "too large"
    with pytest.raises(Exception, match="no usable training record"):
        build_dataset(plugin, values, str(tmp_path / "ds"))
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(side * side))
    info = build_dataset(plugin, values, str(tmp_path / "ds2"))
    assert info["skipped_count"] == 0


# -- item 20 -----------------------------------------------------------------------------------

def test_inference_applies_rescale_slope_and_intercept_like_the_dataset(tmp_path):
    ct = get_testdata_file("CT_small.dcm")  # RescaleIntercept -1024, slope 1
    raw = pydicom.dcmread(ct).pixel_array.astype(np.int64)
    got = infer.load_image(ct)[0]
    np.testing.assert_array_equal(got, raw - 1024)
    np.testing.assert_array_equal(got, dicom.read_slice(ct).pixels)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.RescaleSlope, ds.RescaleIntercept = "3.77", "0"
    mr = tmp_path / "mr.dcm"
    ds.save_as(str(mr))
    expected = (ds.pixel_array.astype(np.float64) * 3.77).astype(np.float32)
    np.testing.assert_array_equal(infer.load_image(str(mr))[0], expected)


def test_the_modality_lut_sequence_is_honoured(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    stored = ds.pixel_array.astype(np.int64)
    entries = int(stored.max()) + 1
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [entries, 0, 16]
    lut.ModalityLUTType = "US"
    table = (np.arange(entries) * 3 + 7).astype(np.uint16)
    lut.add_new(0x00283006, "US", table.tolist())  # LUT Data
    ds.ModalityLUTSequence = pydicom.Sequence([lut])
    path = tmp_path / "lut.dcm"
    ds.save_as(str(path))
    expected = table[stored]  # by hand: the LUT indexed by the stored value
    np.testing.assert_array_equal(dicom.read_slice(str(path)).pixels, expected)
    np.testing.assert_array_equal(infer.load_image(str(path))[0], expected)


# -- items 12 and 13: the Sunnybrook dataset ---------------------------------------------------

def _sunnybrook(phantom_release):
    images, contour_dir = phantom_release
    plugin = SunnybrookPlugin()
    values = {"image_folder": str(images), "contour_folder": str(contour_dir), "val_percent": 0}
    entries = plugin.itemize(plugin.validate(values)).stages["train"]
    return plugin, values, [e.payload for e in entries]


def test_an_8bit_slice_among_16bit_ones_is_skipped_with_the_reason(tmp_path, phantom_release):
    plugin, values, entries = _sunnybrook(phantom_release)
    odd = sorted(entries, key=lambda e: e["image"])[-1]["image"]
    ds = pydicom.dcmread(odd)
    eight = (ds.pixel_array // 16).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = eight.tobytes()
    ds.save_as(odd)
    assert dicom.read_slice(odd).pixels.dtype == np.uint8
    lines = []
    info = build_dataset(plugin, values, str(tmp_path / "ds"), log=lines.append)
    assert info["feature"]["dtype"] == "uint16"
    skipped = [s for s in info["skipped"] if "uint8" in s["message"]]
    assert len(skipped) == 1
    assert "uint8 pixels among the dataset's uint16" in skipped[0]["message"]
    assert any("skipped:" in l and "uint8" in l for l in lines)
    assert info["stages"]["train"]["count"] == len(entries) - 1
    stored = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert stored["skipped_count"] == 1


def test_a_collinear_contour_is_skipped_with_the_reason(tmp_path, phantom_release):
    plugin, values, entries = _sunnybrook(phantom_release)
    line = entries[0]["icontour"]
    with open(line, "w") as fh:
        fh.write("".join("%.2f %.2f\n" % (20 + i, 20 + 2 * i) for i in range(10)))  # on y = 2x - 20
    with pytest.raises(EntryError, match="encloses no area"):
        contours.read_contour(line)
    info = build_dataset(plugin, values, str(tmp_path / "ds"))
    reasons = [s["message"] for s in info["skipped"]]
    assert any(line in r and "encloses no area" in r for r in reasons), reasons
    assert info["stages"]["train"]["count"] == len(entries) - 1


def test_a_real_contour_keeps_its_area():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    assert contours.polygon_area(square) == 100.0


def test_the_dataset_page_says_which_records_were_skipped_and_why(tmp_path, phantom_release):
    """Item 12: the skip is said on the page too, not only in the log."""
    from caffeseg.web import create_app
    plugin, values, entries = _sunnybrook(phantom_release)
    line = entries[0]["icontour"]
    with open(line, "w") as fh:
        fh.write("10 10\n20 20\n30 30\n")
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "START_WORKER": False, "WTF_CSRF_ENABLED": False})
    service = app.extensions["caffeseg_backend"].service
    job = service.create_dataset("sunnybrook", dict(values, split_by="slice"), "ds")
    page = app.test_client().get("/datasets/%s" % job["id"]).get_data(as_text=True)
    assert 'id="skipped-records"' in page and "1 record skipped" in page
    assert "encloses no area" in page
