"""A TIFF's size check counts every value it decodes to (review finding 4): samples per pixel,
image depth and pages, not width × height × pages alone."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from caffeseg.plugin.images import ImageTooLarge, check_image_file, read_image


def test_a_tiff_with_thousands_of_samples_per_pixel_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(64 * 64))
    path = str(tmp_path / "samples.tif")
    tifffile.imwrite(path, np.zeros((64, 64, 3000), np.uint8), planarconfig="contig", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].samplesperpixel == 3000 and len(tif.pages) == 1
    with pytest.raises(ImageTooLarge, match=r"64×64 pixels × 750 \(a pixel of 3000 samples of 8 bits"):
        check_image_file(path)
    with pytest.raises(ImageTooLarge):
        read_image(path)


def test_a_tiff_volume_counts_its_depth(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(32 * 32 * 4))
    path = str(tmp_path / "volume.tif")
    tifffile.imwrite(path, np.zeros((16, 32, 32), np.uint8), volumetric=True, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].imagedepth == 16
    with pytest.raises(ImageTooLarge):
        check_image_file(path)


def test_an_rgb_tiff_within_the_limit_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(8 * 8))  # an RGB pixel counts once, as in a PNG
    path = str(tmp_path / "rgb.tif")
    tifffile.imwrite(path, np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3), photometric="rgb")
    assert check_image_file(path)[:2] == (8, 8)
    assert read_image(path).shape == (3, 8, 8)
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(8 * 8 - 1))
    with pytest.raises(ImageTooLarge):
        read_image(path)


def test_float64_samples_weigh_four_png_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(8 * 8 * 4 - 1))
    path = str(tmp_path / "f64.tif")
    tifffile.imwrite(path, np.zeros((8, 8), np.float64))
    with pytest.raises(ImageTooLarge, match=r"× 4 \(a pixel of 1 samples of 64 bits"):
        check_image_file(path)
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(8 * 8 * 4))
    assert check_image_file(path) == (8, 8, 1)


def test_every_page_of_a_tiff_counts(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFESEG_MAX_IMAGE_PIXELS", str(8 * 8 * 4))
    path = str(tmp_path / "pages.tif")
    with tifffile.TiffWriter(path) as tif:
        for _ in range(5):
            tif.write(np.zeros((8, 8), np.uint8))
    with pytest.raises(ImageTooLarge, match=r"8×8 × 5 frames pixels"):
        check_image_file(path)
