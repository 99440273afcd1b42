"""Reading image files that a user supplies (uploads to infer, dataset folders), safely.

A small compressed file can decode to gigabytes (a 486 KiB PNG of 16000×16000 16-bit pixels), so
every reader here takes the image's size from its header first and refuses it above
``max_image_pixels()`` before any pixel is decoded. The limit is 4096×4096 by default (well above
the 256–1024 px slices of cardiac MRI) and set with the environment variable
``CAFFESEG_MAX_IMAGE_PIXELS`` (one value for the web app, the worker and the CLI, which may be
different processes).

``read_image`` is what inference reads uploads with; DICOM goes through the same reader the
datasets are built with (``plugin.sunnybrook.dicom.read_slice``: Modality LUT or Rescale
Slope/Intercept applied), so a model sees the same values at inference as in training.
"""
import os

import numpy as np

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
ENV_MAX_IMAGE_PIXELS = "CAFFESEG_MAX_IMAGE_PIXELS"


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than the configured limit."""


class UnreadableImage(ValueError):
    """A file that is not an image this reader understands (the message names the file)."""


def max_image_pixels():
    raw = os.environ.get(ENV_MAX_IMAGE_PIXELS)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("%s=%r is not a whole number of pixels" % (ENV_MAX_IMAGE_PIXELS, raw)) from None
    if value <= 0:
        raise ValueError("%s must be positive, got %d" % (ENV_MAX_IMAGE_PIXELS, value))
    return value


def check_pixel_count(name, width, height, frames=1, units=1, why_units=""):
    """ImageTooLarge naming ``name`` when width × height × frames × units exceeds the limit
    (``units``: what one pixel of a frame counts, see ``tiff_pixel_units``; ``why_units`` says why)."""
    total = int(width) * int(height) * max(1, int(frames or 1)) * max(1, int(units or 1))
    limit = max_image_pixels()
    if total > limit:
        frames_text = " × %d frames" % frames if frames and frames > 1 else ""
        units_text = " × %d%s" % (units, why_units) if units and units > 1 else ""
        raise ImageTooLarge("%s: %d×%d%s pixels%s is more than this server reads (%d pixels, %s); "
                            "use a smaller image, or raise the limit with %s"
                            % (name, int(width), int(height), frames_text, units_text, limit,
                               _square(limit), ENV_MAX_IMAGE_PIXELS))


# A PNG pixel holds at most 4 samples of 16 bits: such a pixel counts once against the limit;
# a TIFF pixel holding more (samples per pixel, bits per sample) counts as that many PNG pixels.
PIXEL_SAMPLES, PIXEL_SAMPLE_BITS = 4, 16


def tiff_pixel_units(page):
    """How many PNG pixels one pixel of this TIFF page weighs: ceil(samples / 4) × ceil(bits / 16)."""
    samples = max(1, int(page.samplesperpixel or 1))
    bits = max(1, int(page.bitspersample or 1))
    return -(-samples // PIXEL_SAMPLES) * -(-bits // PIXEL_SAMPLE_BITS)


def _check_tiff(path, name):
    """(width, height, pages) of the TIFF's first page, ImageTooLarge when all its pages together
    (width × height × depth × pixel units each) exceed the limit; stops reading page headers as
    soon as they do."""
    import tifffile
    limit = max_image_pixels()
    try:
        with tifffile.TiffFile(path) as tif:
            first = tif.pages[0]
            width, height = int(first.imagewidth), int(first.imagelength)
            total, pages = 0, 0
            for page in tif.pages:
                pages += 1
                units = tiff_pixel_units(page) * max(1, int(page.imagedepth or 1))
                total += int(page.imagewidth) * int(page.imagelength) * units
                if total > limit:
                    why = (" (a pixel of %d samples of %d bits, depth %d, counts as %d pixels)"
                           % (page.samplesperpixel, page.bitspersample, page.imagedepth or 1, units))
                    if pages == 1:
                        check_pixel_count(name, page.imagewidth, page.imagelength, 1, units, why)
                    check_pixel_count(name, width, height, pages, -(-total // max(1, pages * width * height)),
                                      " (samples, bits and depth of %d pages counted)" % pages)
    except ImageTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed header
        raise UnreadableImage("%s: unreadable TIFF header (%s)" % (name, exc)) from None
    return width, height, pages


def _square(limit):
    side = int(limit ** 0.5)
    return "%d×%d" % (side, side) if side * side == limit else "%d px" % limit


def looks_like_dicom(path):
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def header_size(path, name=None):
    """(width, height, frames) from the file's header, without decoding pixels; a TIFF is also
    checked against the limit here, every page with its samples, bits and depth (_check_tiff)."""
    name = name or path
    lower = path.lower()
    if lower.endswith((".dcm", ".dicom")) or looks_like_dicom(path):
        import pydicom
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows), int(getattr(ds, "NumberOfFrames", 1) or 1)
        except Exception as exc:  # noqa: BLE001 - any malformed header
            raise UnreadableImage("%s: unreadable DICOM header (%s)" % (name, exc)) from None
    if lower.endswith((".tif", ".tiff")):
        return _check_tiff(path, name)
    import warnings
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            with Image.open(path) as im:  # reads the header only
                return int(im.size[0]), int(im.size[1]), int(getattr(im, "n_frames", 1) or 1)
    except Image.DecompressionBombError as exc:  # beyond twice Pillow's own limit
        raise ImageTooLarge("%s: %s; use a smaller image" % (name, exc)) from None
    except Exception as exc:  # noqa: BLE001
        raise UnreadableImage("%s: not an image file this server reads (%s)" % (name, exc)) from None


def check_image_file(path, name=None):
    """The file's header-announced size, refused above the limit: (width, height, frames)."""
    width, height, frames = header_size(path, name)
    check_pixel_count(name or path, width, height, frames)
    return width, height, frames


def read_image(path, name=None):
    """An image file → C×H×W array in its own dtype (uint8/uint16/float; DICOM in modality units).

    The header is checked first (``check_image_file``); DICOM is read like the datasets."""
    name = name or path
    lower = path.lower()
    if lower.endswith((".dcm", ".dicom")) or looks_like_dicom(path):
        from caffeseg.plugin.base import EntryError
        from caffeseg.plugin.sunnybrook.dicom import read_slice
        try:
            arr = read_slice(path).pixels  # checks the pixel count itself
        except EntryError as exc:
            raise UnreadableImage(str(exc)) from None
    else:
        check_image_file(path, name)
        if lower.endswith((".tif", ".tiff")):
            import tifffile
            try:
                arr = np.asarray(tifffile.imread(path))
            except Exception as exc:  # noqa: BLE001
                raise UnreadableImage("cannot read image %s (%s)" % (name, exc)) from None
        else:
            import cv2
            arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise UnreadableImage("%s is not an image OpenCV can read" % name)
            if arr.ndim == 3:
                arr = arr[:, :, 2::-1] if arr.shape[2] >= 3 else arr  # BGR(A) → RGB
    if arr.ndim == 2:
        return arr[None]
    return np.ascontiguousarray(np.transpose(arr, (2, 0, 1)))
