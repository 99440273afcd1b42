"""``caffe.io``: array/Datum/BlobProto conversion, image loading and the deploy ``Transformer``.

The conversions delegate to ``engine.datum`` and ``engine.blobproto``. ``load_image`` and
``Transformer`` follow pycaffe's conventions: images are H×W×C floats in [0, 1], RGB order;
the Transformer turns them into the net's C×H×W input (transpose, channel swap, raw scale,
mean, input scale — in that order) and back.
"""
from __future__ import annotations

import numpy as np

from caffeseg.engine.blobproto import array_to_blobproto as _array_to_blobproto
from caffeseg.engine.blobproto import blobproto_to_array as _blobproto_to_array
from caffeseg.engine.datum import array_to_datum as _array_to_datum
from caffeseg.engine.datum import datum_to_array  # noqa: F401
from caffeseg.engine.proto import caffe_pb2  # noqa: F401
from caffeseg.engine import resize as _resize


def array_to_datum(arr, label=None):
    """A Datum from a C×H×W array (uint8 -> ``data`` bytes, else ``float_data``); ``label``
    is left unset when None, as in pycaffe (the serialized Datum is then smaller)."""
    datum = _array_to_datum(arr, 0 if label is None else label)
    if label is None:
        datum.ClearField("label")
    return datum


def blobproto_to_array(blob, return_diff=False):
    """pycaffe's signature: the data (or, with ``return_diff``, the diff) of a BlobProto."""
    return _blobproto_to_array(blob, diff=return_diff)


def array_to_blobproto(arr, diff=None):
    return _array_to_blobproto(np.asarray(arr, dtype=np.float32), diff)


def arraylist_to_blobprotovector_str(arraylist):
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text):
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(text)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def load_image(filename, color=True):
    """An image file as float32 H×W×3 (RGB, ``color=True``) or H×W×1 in [0, 1] (8-bit /255,
    16-bit /65535); alpha is dropped; ``color=False`` turns RGB into skimage's gray (BT.709)."""
    from PIL import Image
    try:
        with Image.open(filename) as img:
            img.load()
            raw = np.asarray(img)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {filename}: {err}") from None
    if raw.dtype == np.uint8:
        arr = raw.astype(np.float32) / 255.0
    elif raw.dtype in (np.uint16, np.int32) or np.issubdtype(raw.dtype, np.integer):
        arr = raw.astype(np.float32) / float(np.iinfo(raw.dtype).max if raw.dtype != np.int32 else 65535)
    elif raw.dtype == bool:
        arr = raw.astype(np.float32)
    else:
        arr = raw.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
        if color:
            arr = np.tile(arr, (1, 1, 3))
    elif arr.shape[2] in (3, 4):
        arr = arr[:, :, :3]
        if not color:
            # pycaffe reads gray through skimage's rgb2gray: ITU-R BT.709 luma
            arr = (arr * np.array([0.2125, 0.7154, 0.0721], np.float32)).sum(axis=2, keepdims=True)
    return arr


def resize_image(im, new_dims, interp_order=1):
    """Resize H×W×K ``im`` to ``new_dims`` (height, width) with pycaffe's results: 1- and
    3-channel images are scaled to [0, 1], resized as ``skimage.transform.resize(...,
    mode='constant')`` does and scaled back (a constant image stays constant); other channel
    counts as ``scipy.ndimage.zoom`` does (``engine.resize``). Orders 0 and 1."""
    im = np.asarray(im, dtype=np.float64)
    if im.ndim != 3:
        raise ValueError(f"resize_image needs an H x W x K image, got shape {im.shape}")
    size = (int(new_dims[0]), int(new_dims[1]))
    if im.shape[-1] in (1, 3):
        low, high = im.min(), im.max()
        if high <= low:
            return np.full(size + (im.shape[-1],), low, dtype=np.float32)
        resized = _resize.skimage_resize((im - low) / (high - low), size, interp_order)
        return (resized * (high - low) + low).astype(np.float32)
    return _resize.ndimage_zoom(im, size, interp_order).astype(np.float32)


class Transformer:
    """pycaffe's input preprocessing for deploy nets: ``inputs`` maps input name → blob shape."""

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, name):
        if name not in self.inputs:
            raise ValueError(f"{name} is not one of the net inputs: {sorted(self.inputs)}")

    def set_transpose(self, name, order):
        self._check_input(name)
        if len(order) != len(self.inputs[name]) - 1:
            raise ValueError("transpose order needs to have the same number of dimensions as the input")
        self.transpose[name] = tuple(order)

    def set_channel_swap(self, name, order):
        self._check_input(name)
        if len(order) != self.inputs[name][1]:
            raise ValueError("channel swap needs to have the same number of dimensions as the input channels")
        self.channel_swap[name] = tuple(order)

    def set_raw_scale(self, name, scale):
        self._check_input(name)
        self.raw_scale[name] = float(scale)

    def set_input_scale(self, name, scale):
        self._check_input(name)
        self.input_scale[name] = float(scale)

    def set_mean(self, name, mean):
        """The mean to subtract: per channel (length C), or C×H×W / H×W elementwise; an
        elementwise mean of another size is resized to the input's (as pycaffe does)."""
        self._check_input(name)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[name][1]:
                raise ValueError(f"mean has {mean.shape[0]} channels, input '{name}' has {self.inputs[name][1]}")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            shape = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(shape) != 3:
                raise ValueError(f"mean shape {mean.shape} is invalid (give C, or C×H×W)")
            if tuple(shape) != self.inputs[name][1:]:
                low, high = mean.min(), mean.max()
                scaled = (mean.reshape(shape) - low) / (high - low)
                mean = resize_image(scaled.transpose((1, 2, 0)), self.inputs[name][2:]).transpose((2, 0, 1)) \
                    * (high - low) + low
        self.mean[name] = mean

    def preprocess(self, name, data):
        """H×W×K image -> K×H×W net input: float32, resize to the input size, transpose,
        channel swap, ×raw_scale, −mean, ×input_scale (in place on float32, as pycaffe)."""
        self._check_input(name)
        x = np.array(data, dtype=np.float32)
        in_dims = self.inputs[name][2:]
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        if name in self.transpose:
            x = x.transpose(self.transpose[name])
        if name in self.channel_swap:
            x = x[list(self.channel_swap[name]), :, :]
        if name in self.raw_scale:
            x *= self.raw_scale[name]
        if name in self.mean:
            x -= self.mean[name]
        if name in self.input_scale:
            x *= self.input_scale[name]
        return np.ascontiguousarray(x)

    def deprocess(self, name, data):
        """Net input -> image: ``preprocess`` undone (without the resize), after squeezing
        singleton axes as pycaffe does."""
        self._check_input(name)
        x = np.array(data).squeeze()
        if name in self.input_scale:
            x /= self.input_scale[name]
        if name in self.mean:
            mean = self.mean[name]
            if np.broadcast_shapes(x.shape, mean.shape) == x.shape:
                x += mean  # in place, keeping the data's float32 like pycaffe
            else:
                x = x + mean
        if name in self.raw_scale:
            x /= self.raw_scale[name]
        if name in self.channel_swap:
            x = x[np.argsort(self.channel_swap[name]), :, :]
        if name in self.transpose:
            x = x.transpose(np.argsort(self.transpose[name]))
        return x


def oversample(images, crop_dims):
    """The ten crops pycaffe's Classifier averages over: for each H×W×K image, the four corner
    crops (top-left, top-right, bottom-left, bottom-right), the center crop, then those five
    mirrored left-right. Returns a (10·N)×h×w×K float32 array for ``crop_dims`` (h, w)."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("oversample() needs at least one image")
    height, width, channels = images[0].shape
    h, w = (int(d) for d in crop_dims)
    if h > height or w > width:
        raise ValueError(f"crop {h}x{w} is larger than the {height}x{width} images")
    corners = [(y, x) for y in (0, height - h) for x in (0, width - w)]
    # the center crop starts at center - crop/2, truncated as pycaffe's integer crop indices are
    corners.append((int(height / 2.0 - h / 2.0), int(width / 2.0 - w / 2.0)))
    crops = np.empty((10 * len(images), h, w, channels), dtype=np.float32)
    for i, im in enumerate(images):
        if im.shape != (height, width, channels):
            raise ValueError(f"image {i} has shape {im.shape}, the first has {(height, width, channels)}")
        five = np.stack([im[y:y + h, x:x + w, :] for y, x in corners])
        crops[10 * i:10 * i + 5] = five
        crops[10 * i + 5:10 * i + 10] = five[:, :, ::-1, :]
    return crops
