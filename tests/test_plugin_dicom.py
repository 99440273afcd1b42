"""Sunnybrook DICOM reader on pydicom's real test files: exact values, clear refusals."""

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate

from caffeseg.plugin.base import EntryError
from caffeseg.plugin.sunnybrook import dicom


def _testfile(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip("%s is not shipped with this pydicom (download-only)" % name)
    return path


def test_uncompressed_mr_is_exact_and_keeps_spacing():
    path = _testfile("MR_small.dcm")
    ref = pydicom.dcmread(path)
    sl = dicom.read_slice(path)
    assert sl.pixels.dtype == ref.pixel_array.dtype
    np.testing.assert_array_equal(sl.pixels, ref.pixel_array)
    assert sl.pixel_spacing == (float(ref.PixelSpacing[0]), float(ref.PixelSpacing[1]))


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                                  "emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm"])
def test_lossless_compressed_files_decode(name):
    path = _testfile(name)
    sl = dicom.read_slice(path)  # decoded through the installed pylibjpeg / RLE plugins
    if name.startswith("MR_small"):
        ref = pydicom.dcmread(_testfile("MR_small.dcm")).pixel_array
        np.testing.assert_array_equal(sl.pixels, ref)
    else:
        assert sl.pixels.ndim >= 2


def test_jpeg2000_decodes():
    sl = dicom.read_slice(_testfile("JPEG2000.dcm"))
    assert sl.pixels.shape == (1024, 256)


def _with_syntax(tmp_path, uid):
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    out = str(tmp_path / "IM-0004-0001.dcm")
    ds.save_as(out)
    return out


def test_syntax_without_decoder_is_refused_naming_file_and_syntax(tmp_path):
    path = _with_syntax(tmp_path, "1.2.840.10008.1.2.4.100")  # MPEG2: no plugin decodes it
    with pytest.raises(EntryError) as err:
        dicom.read_slice(path)
    msg = str(err.value)
    assert path in msg and "MPEG2" in msg and "no decoder plugin installed" in msg


def test_missing_jpeg_plugin_message_says_what_to_install(tmp_path, monkeypatch):
    path = _with_syntax(tmp_path, "1.2.840.10008.1.2.4.80")  # JPEG-LS lossless
    monkeypatch.setattr(dicom, "_available_decoders", lambda ts: [])
    with pytest.raises(EntryError) as err:
        dicom.read_slice(path)
    assert "pylibjpeg-libjpeg" in str(err.value) and "JPEG-LS" in str(err.value)


def test_corrupt_compressed_data_names_installed_decoders(tmp_path):
    path = _with_syntax(tmp_path, "1.2.840.10008.1.2.4.50")  # raw bytes labelled JPEG baseline
    with pytest.raises(EntryError) as err:
        dicom.read_slice(path)
    assert path in str(err.value) and "could not decode" in str(err.value)


def test_not_dicom_and_truncated(tmp_path):
    junk = tmp_path / "IM-0004-0001.dcm"
    junk.write_bytes(b"not a dicom" * 50)
    with pytest.raises(EntryError, match="not a DICOM file"):
        dicom.read_slice(str(junk))
    raw = open(_testfile("MR_small.dcm"), "rb").read()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(raw[:-3000])
    with pytest.raises(EntryError, match="cut.dcm"):
        dicom.read_slice(str(cut))


def test_rescale_slope_intercept_applied(tmp_path):
    ds = pydicom.dcmread(_testfile("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.int64)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    p1 = str(tmp_path / "int.dcm")
    ds.save_as(p1)
    np.testing.assert_array_equal(dicom.read_slice(p1).pixels, raw * 2 - 1024)
    ds.RescaleSlope = "0.5"
    ds.RescaleIntercept = "0"
    p2 = str(tmp_path / "float.dcm")
    ds.save_as(p2)
    got = dicom.read_slice(p2).pixels
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (raw * 0.5).astype(np.float32))
