"""Reading Sunnybrook (and other MR) DICOM slices with pydicom, keeping values exact.

* Stored pixel values are kept as they are (16-bit stays 16-bit; no 8-bit windowing).
* Stored values become modality units as pydicom's ``apply_modality_lut`` defines them: the
  Modality LUT Sequence when present, else Rescale Slope/Intercept (when not identity); integer
  slope and intercept give integer values (exact in float32 up to 2**24), others give float32.
  Inference reads uploads through this same function (``plugin.images.read_image``).
* The image size comes from the header (Rows × Columns × frames) and is refused above
  ``plugin.images.max_image_pixels()`` before the pixel data is read or decoded.
* Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins (pylibjpeg,
  pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, or pydicom's own RLE decoder); when
  none can decode a file, the error names the transfer syntax and what to install.
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from caffeseg.plugin.base import EntryError
from caffeseg.plugin.images import ImageTooLarge, check_pixel_count

# What to install for each family of compressed transfer syntaxes.
_PLUGIN_HINTS = (
    ("JPEG-LS", "pylibjpeg + pylibjpeg-libjpeg (or pyjpegls)"),
    ("JPEG 2000", "pylibjpeg + pylibjpeg-openjpeg"),
    ("High-Throughput JPEG 2000", "pylibjpeg + pylibjpeg-openjpeg (>= 2.0)"),
    ("JPEG", "pylibjpeg + pylibjpeg-libjpeg"),
    ("RLE", "pylibjpeg + pylibjpeg-rle (or numpy for pydicom's own RLE decoder)"),
    ("Deflate", "nothing extra (zlib); the file may be corrupt"),
)


@dataclass
class DicomSlice:
    pixels: np.ndarray                     # H x W (or H x W x 3 for colour files)
    pixel_spacing: Optional[Tuple[float, float]]  # (row, column) mm, None if absent
    meta: dict


def _plugin_hint(ts_name):
    for key, hint in _PLUGIN_HINTS:
        if key.lower() in ts_name.lower():
            return hint
    return "a pydicom pixel-data plugin for it"


def read_slice(path):
    """Read one DICOM file -> DicomSlice; EntryError with the file name on any failure."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        # Large values (the pixel data) are read only when used, after the size check below.
        ds = pydicom.dcmread(path, defer_size="1 MB")
    except InvalidDicomError:
        raise EntryError("%s: not a DICOM file (no DICM preamble or header)" % path,
                         source=path) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise EntryError("%s: unreadable DICOM (%s)" % (path, exc), source=path) from None
    if "PixelData" not in ds:
        raise EntryError("%s: DICOM file has no pixel data" % path, source=path)
    try:
        check_pixel_count(path, int(ds.get("Columns") or 0), int(ds.get("Rows") or 0),
                          int(ds.get("NumberOfFrames", 1) or 1))
    except ImageTooLarge as exc:
        raise EntryError(str(exc), source=path) from None
    except (TypeError, ValueError) as exc:
        raise EntryError("%s: unreadable image size in the DICOM header (%s)" % (path, exc),
                         source=path) from None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = ts.name if ts is not None else "unknown transfer syntax"
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        compressed = bool(ts is not None and ts.is_compressed)
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        if compressed:
            plugins = _available_decoders(ts)
            if plugins:
                raise EntryError("%s: the installed decoders for %s (%s) could not decode the "
                                 "pixel data; the file is corrupt or uses an unsupported "
                                 "variant [pydicom said: %s]"
                                 % (path, ts_name, ", ".join(plugins), said),
                                 source=path) from None
            raise EntryError("%s: cannot decode compressed pixel data (%s, %s): no decoder "
                             "plugin installed; install %s [pydicom said: %s]"
                             % (path, ts_name, ts, _plugin_hint(ts_name), said),
                             source=path) from None
        raise EntryError("%s: cannot decode pixel data (%s): %s" % (path, ts_name, exc),
                         source=path) from None
    except Exception as exc:  # truncated/corrupt pixel data surfaces as many types
        raise EntryError("%s: corrupt pixel data (%s: %s)" % (path, type(exc).__name__, exc),
                         source=path) from None
    if pixels.ndim == 3 and int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise EntryError("%s: multi-frame DICOM (%d frames); one slice per file expected"
                         % (path, pixels.shape[0]), source=path)
    pixels = _modality_values(ds, pixels)
    spacing, meta = header_meta(ds)
    return DicomSlice(pixels=pixels, pixel_spacing=spacing, meta=meta)


def header_meta(ds):
    """(pixel spacing (row, column) mm or None, {slice geometry, timing and identity}) of a
    dataset's header; nothing here needs the pixel data."""
    spacing = None
    if "PixelSpacing" in ds:
        try:
            spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
        except (TypeError, ValueError, IndexError):
            spacing = None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    meta = {
        "transfer_syntax": str(ts) if ts is not None else None,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
        "slice_location": _float_or_none(ds.get("SliceLocation")),
        "instance_number": _int_or_none(ds.get("InstanceNumber")),
        "trigger_time": _float_or_none(ds.get("TriggerTime")),
        # Slice geometry and identity, for per-patient volumes and DICOM SEG references.
        "slice_thickness": _float_or_none(ds.get("SliceThickness")),
        "spacing_between_slices": _float_or_none(ds.get("SpacingBetweenSlices")),
        "image_position": _floats_or_none(ds.get("ImagePositionPatient"), 3),
        "image_orientation": _floats_or_none(ds.get("ImageOrientationPatient"), 6),
        "cardiac_images": _int_or_none(ds.get("CardiacNumberOfImages")),
        "patient_id": str(ds.get("PatientID", "") or "") or None,
        "series_uid": str(ds.get("SeriesInstanceUID", "") or "") or None,
        "sop_uid": str(ds.get("SOPInstanceUID", "") or "") or None,
    }
    return spacing, meta


def read_header(path):
    """header_meta of one DICOM file without decoding its pixels; EntryError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise EntryError("%s: not a DICOM file (no DICM preamble or header)" % path,
                         source=path) from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise EntryError("%s: unreadable DICOM (%s)" % (path, exc), source=path) from None
    return header_meta(ds)


def _available_decoders(ts):
    """Names of installed pydicom decoder plugins for ``ts`` (empty if none / unknown)."""
    try:
        from pydicom.pixels import get_decoder
        return sorted(get_decoder(ts).available_plugins)
    except Exception:  # unknown syntax, or an older pydicom without the decoder registry
        return []


def _modality_values(ds, pixels):
    """Stored values → modality units (DICOM PS3.3 C.11.1), as ``apply_modality_lut``.

    The Modality LUT Sequence goes through pydicom; the rescale is its linear formula, kept
    integer for integer slope and intercept (exact), float32 otherwise (what the dataset stores)."""
    from pydicom.pixels import apply_modality_lut
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(pixels, ds)
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is None and intercept is None:
        return pixels
    slope = float(slope) if slope is not None else 1.0
    intercept = float(intercept) if intercept is not None else 0.0
    if slope == 1.0 and intercept == 0.0:
        return pixels
    if slope.is_integer() and intercept.is_integer():
        return pixels.astype(np.int64) * int(slope) + int(intercept)
    # apply_modality_lut's own rescale needs both tags; one alone means the other's default
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _float_or_none(v):
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _floats_or_none(v, count):
    """A multi-valued numeric element (ImagePositionPatient...) as a list of floats, or None."""
    try:
        values = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and all(np.isfinite(values)) else None


def _int_or_none(v):
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None
