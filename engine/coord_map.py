"""``caffe.coord_map``: how pixel coordinates correspond between tops of a ``NetSpec``, and
``crop``, which writes the Crop layer that lines one top up with another.

A *map* is a tuple ``(axis, a, b)``: along each spatial axis after ``axis``, a coordinate ``x``
in one top corresponds to ``a * x + b`` in the other (``a``, ``b``: numbers, or arrays with one
entry per spatial axis). ``axis`` is the last non-spatial axis; ``None`` means the map holds on
any axes (pointwise layers).

Each layer maps its bottom's coordinates to its top's (``k_eff = (kernel - 1) * dilation + 1``;
stride, pad and dilation default to 1, 0 and 1, as in Caffe):

=========================================  ======================  ==============================
layer type                                 a                       b
=========================================  ======================  ==============================
Convolution, Pooling, Im2col               ``1 / stride``          ``(pad - (k_eff - 1)/2) / stride``
Deconvolution                              ``stride``              ``(k_eff - 1)/2 - pad``
Crop (first bottom only)                   ``1``                   ``-offset``
pointwise (``PASS_THROUGH_LAYERS``)        ``1``                   ``0``
=========================================  ======================  ==============================

``axis`` is the layer's ``axis`` (default 1) for the convolution-like layers and the crop
``axis`` minus 1 (default 2 - 1) for Crop. Any other type (InnerProduct, a global pooling, a data
layer...) has no map: ``UndefinedMapException``, and a walk through the graph stops there.
Kernel, stride and pad are read from the layer's ``convolution_param`` (``pooling_param`` for
Pooling) when one is given, else from its flat keyword arguments; the legacy ``*_h``/``*_w``
keys are refused.

``coord_map_from_to(top_from, top_to)`` walks back from both tops to a blob they share and
returns the map taking ``top_from``'s coordinates to ``top_to``'s. ``crop(top_from, top_to)`` needs
that map to be ``a = 1`` with a whole ``b <= 0`` and crops ``-b`` at axis ``axis + 1``.
"""
from __future__ import annotations

import collections

import numpy as np

from caffeseg.engine import net_spec

#: layers whose every output pixel sits where its input pixel is
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN",
                       "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                       "Threshold"]

_IDENTITY = (None, 1, 0)
_LEGACY_KEYS = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")


class UndefinedMapException(Exception):
    """The layer type has no coordinate map (it does not keep spatial positions)."""


class AxisMismatchException(Exception):
    """Two maps hold on different axes and cannot be chained."""


def _as_axes(value) -> np.ndarray:
    return np.array(value, ndmin=1)


def _geometry_source(fn, message_key: str) -> dict:
    nested = fn.params.get(message_key)
    source = nested if isinstance(nested, dict) else fn.params
    legacy = [key for key in _LEGACY_KEYS if key in source or key in fn.params]
    assert not legacy, "cropping does not support legacy _h/_w params (%s on %s)" % (
        ", ".join(legacy), fn.type_name)
    return source


def conv_params(fn):
    """``(axis, stride, k_eff, pad)`` of a Convolution, Deconvolution, Im2col or Pooling layer;
    stride, extent and pad as arrays (one entry, or one per spatial axis)."""
    source = _geometry_source(fn, "pooling_param" if fn.type_name == "Pooling" else "convolution_param")
    if source.get("global_pooling"):
        raise UndefinedMapException(f"a global {fn.type_name} keeps no spatial position")
    if "kernel_size" not in source:
        raise UndefinedMapException(f"{fn.type_name} without kernel_size has no coordinate map")
    kernel = _as_axes(source["kernel_size"])
    dilation = _as_axes(source.get("dilation", 1))
    return (source.get("axis", 1), _as_axes(source.get("stride", 1)),
            (kernel - 1) * dilation + 1, _as_axes(source.get("pad", 0)))


def crop_params(fn):
    """``(axis, offset)`` of a Crop layer; offset as an array."""
    nested = fn.params.get("crop_param")
    source = nested if isinstance(nested, dict) else fn.params
    return source.get("axis", 2), _as_axes(source.get("offset", 0))


def _downsampling_map(fn):
    axis, stride, extent, pad = conv_params(fn)
    return axis, 1 / stride, (pad - (extent - 1) / 2) / stride


def _upsampling_map(fn):
    axis, stride, extent, pad = conv_params(fn)
    return axis, stride, (extent - 1) / 2 - pad


def _crop_map(fn):
    axis, offset = crop_params(fn)
    return axis - 1, 1, -offset


_LAYER_MAPS = {"Convolution": _downsampling_map, "Pooling": _downsampling_map, "Im2col": _downsampling_map,
               "Deconvolution": _upsampling_map, "Crop": _crop_map}
_LAYER_MAPS.update({kind: (lambda fn: _IDENTITY) for kind in PASS_THROUGH_LAYERS})


def coord_map(fn):
    """The map from the layer ``fn``'s bottom coordinates to its top coordinates (table above)."""
    make = _LAYER_MAPS.get(fn.type_name)
    if make is None:
        raise UndefinedMapException(f"no coordinate map for layer type {fn.type_name}")
    return make(fn)


def compose(base_map, next_map):
    """The map doing ``next_map`` first, then ``base_map``: ``x -> a1 * (a2 * x + b2) + b1``.
    Raises ``AxisMismatchException`` when both maps name an axis and they differ."""
    axis_base, a_base, b_base = base_map
    axis_next, a_next, b_next = next_map
    if axis_base is not None and axis_next is not None and axis_base != axis_next:
        raise AxisMismatchException(f"cannot compose maps on axes {axis_base} and {axis_next}")
    axis = axis_next if axis_base is None else axis_base
    return axis, a_base * a_next, a_base * b_next + b_base


def inverse(coord_map):
    """The map undoing ``coord_map``: ``y -> (y - b) / a``."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _spatial_bottoms(top):
    """The bottoms whose coordinates the top's layer follows (a Crop follows its first only:
    the second gives the size)."""
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == "Crop" else inputs


def _walk_back(start):
    """Yield ``(blob, map)`` for ``start`` and each blob it can be traced back to, breadth
    first; ``map`` takes ``blob``'s coordinates to ``start``'s. Layers without a map end the
    walk on their branch."""
    found = {start}
    queue = collections.deque([(start, _IDENTITY)])
    yield start, _IDENTITY
    while queue:
        top, to_start = queue.popleft()
        bottoms = [b for b in _spatial_bottoms(top) if b not in found]
        if not bottoms:
            continue
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        through = compose(to_start, step)
        for bottom in bottoms:
            found.add(bottom)
            queue.append((bottom, through))
            yield bottom, through


def coord_map_from_to(top_from, top_to):
    """The map ``(axis, a, b)`` taking ``top_from``'s coordinates to ``top_to``'s, found through
    the nearest blob both are computed from (all paths are taken to agree). ``RuntimeError``
    when no such blob is reachable through layers that have maps."""
    from_side = dict(_walk_back(top_from))
    for blob, to_target in _walk_back(top_to):
        if blob in from_side:
            return compose(to_target, inverse(from_side[blob]))
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer (a ``Top``) cutting ``top_from`` to ``top_to``'s extent at the offset that
    puts their pixels on top of each other. ``AssertionError`` when the tops differ in scale or
    the offset would be negative or fractional."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    assert (a == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (b <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    if axis is None:
        raise ValueError("crop: only pointwise layers lie between the two tops, so no spatial "
                         "axis is known; no Crop is needed")
    offsets = [int(v) for v in -np.round(np.atleast_1d(b))]
    return net_spec.layers.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
