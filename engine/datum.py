"""Datum records (the values stored in Caffe LMDB/LevelDB databases) <-> numpy arrays.

Arrays are always C x H x W, as Caffe stores them (channel-major). Three storage forms:

* uint8 arrays -> raw ``data`` bytes (C x H x W order).
* any other dtype -> ``float_data`` (one float32 per value, C x H x W). uint16 and int16 values
  are exact in float32, which is how DIGITS stores 16-bit images.
* ``encoding="png"`` / ``"jpg"`` -> an encoded image file in ``data`` with ``encoded: true``.
  PNG keeps uint16 as 16 bits; JPEG takes uint8 only.

Channel order of encoded datums: the C axis is handed to OpenCV as is, so channel 0 is the
file's *blue* channel for a 3-channel image (OpenCV writes BGR), exactly what Caffe's own
tools store and what Caffe's DataTransformer gets back when it decodes the datum. Decoding uses
``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)`` (16-bit PNGs stay 16-bit, alpha is kept) and
returns the channels in the same order, so ``datum_to_array(array_to_datum(a, encoding="png"))``
equals ``a``. To store an RGB image so that image viewers show it correctly, pass it in BGR order
(``rgb[::-1]``).
"""

import numpy as np

from caffeseg.engine.proto import caffe_pb2

_ENCODINGS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}


class DatumError(ValueError):
    """A Datum that cannot be decoded, or an array that cannot be stored in one."""


def _as_chw(arr):
    arr = np.asarray(arr)
    if arr.ndim == 2:
        return arr[np.newaxis]
    if arr.ndim != 3:
        raise DatumError("a Datum holds a C x H x W (or H x W) array; got %d axes with shape %s"
                         % (arr.ndim, arr.shape))
    return arr


def array_to_datum(arr, label=0, encoding=None):
    """Build a Datum from a C x H x W (or H x W) array; see the module notes for the forms."""
    arr = _as_chw(arr)
    c, h, w = (int(d) for d in arr.shape)
    datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(label))
    if encoding is not None:
        datum.data = _encode(arr, encoding)
        datum.encoded = True
    elif arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise DatumError("cannot store an array of dtype %s in a Datum" % arr.dtype)
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    return datum


def _encode(arr, encoding):
    import cv2
    ext = _ENCODINGS.get(str(encoding).lower())
    if ext is None:
        raise DatumError('unknown Datum encoding "%s"; use "png" or "jpg"' % encoding)
    if arr.dtype not in (np.uint8, np.uint16) or (ext == ".jpg" and arr.dtype != np.uint8):
        raise DatumError("%s encoding cannot store %s values (PNG: uint8 or uint16, JPEG: "
                         "uint8)" % (ext[1:].upper(), arr.dtype))
    if arr.shape[0] not in (1, 3, 4):
        raise DatumError("%s encoding needs 1, 3 or 4 channels, got %d"
                         % (ext[1:].upper(), arr.shape[0]))
    image = arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise DatumError("OpenCV could not encode a %s image of shape %s"
                         % (ext[1:].upper(), arr.shape))
    return buf.tobytes()


def datum_to_array(datum):
    """The C x H x W array stored in ``datum``.

    uint8 for ``data``, float32 for ``float_data``, the decoded dtype (uint8/uint16) for encoded
    images. A size that disagrees with channels x height x width raises ``DatumError``.
    """
    if datum.encoded:
        return _decode(datum.data)
    c, h, w = datum.channels, datum.height, datum.width
    count = c * h * w
    if len(datum.data):
        if len(datum.data) != count:
            raise DatumError("Datum holds %d bytes of data but channels x height x width = "
                             "%d x %d x %d = %d" % (len(datum.data), c, h, w, count))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w).copy()
    if len(datum.float_data) != count:
        raise DatumError("Datum holds %d float_data values but channels x height x width = "
                         "%d x %d x %d = %d" % (len(datum.float_data), c, h, w, count))
    return np.array(datum.float_data, dtype=np.float32).reshape(c, h, w)


def _decode(data):
    import cv2
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatumError("encoded Datum (%d bytes) is not an image OpenCV can decode"
                         % len(data))
    if image.ndim == 2:
        return image[np.newaxis].copy()
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def parse_datum(raw, source="<bytes>"):
    """Parse serialized Datum bytes (an LMDB value) with a clear error for other data."""
    from google.protobuf.message import DecodeError
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except DecodeError:
        raise DatumError("%s: not a serialized Datum (truncated or corrupt)" % source) from None
    return datum


def bytes_to_array(raw, source="<bytes>"):
    """Serialized Datum bytes -> (C x H x W array, label)."""
    datum = parse_datum(raw, source)
    return datum_to_array(datum), datum.label
