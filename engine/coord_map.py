"""``caffe.coord_map``: how spatial coordinates map between tops of a ``NetSpec``, and ``crop``.

A map is ``(axis, a, b)``: output coordinate ``= a * input coordinate + b`` along the spatial
axes from ``axis`` on (``axis`` None: any axis, as for pointwise layers). Convolution-like
layers scale by ``1/stride`` and shift by ``(pad - (k_eff - 1)/2)/stride`` with
``k_eff = (kernel - 1)*dilation + 1``; Deconvolution is the inverse; Crop shifts by
``-offset``. ``crop(a, b)`` builds the Crop layer that aligns top ``a`` to top ``b`` (what FCN
does after each upsampling).
"""
from __future__ import annotations

import numpy as np

from engine import net_spec

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN",
                       "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH",
                       "Threshold"]


class UndefinedMapException(Exception):
    """The layer has no defined coordinate mapping (the walk stops there)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def conv_params(fn):
    """``(axis, stride, effective kernel, pad)`` of a Convolution/Deconvolution/Im2col/Pooling
    spec, as arrays (one entry, or one per spatial axis)."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    assert not legacy, "cropping does not support legacy _h/_w params"
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """``(axis, offset)`` of a Crop spec, with Caffe's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The map from ``fn``'s bottom coordinates to its top coordinates."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if kind == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # -1: the map's axis is the last non-coordinate axis
    raise UndefinedMapException(f"no coordinate map for layer type {kind}")


def compose(base_map, next_map):
    """``next_map`` applied after ``base_map``: scales multiply, the next shift is scaled."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException(f"cannot compose maps on axes {ax1} and {ax2}")
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back (top to bottom coordinates)."""
    axis, a, b = coord_map
    return axis, 1 / a, -b / a


def _mappable_bottoms(top):
    # Crop's second bottom only gives the output size: its coordinates do not flow
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def coord_map_from_to(top_from, top_to):
    """The map from ``top_from``'s coordinates to ``top_to``'s: walk back from both to a common
    ancestor, composing maps on the way, then combine the ``to`` walk with the inverted
    ``from`` walk."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        top = frontier.pop()
        try:
            for bottom in _mappable_bottoms(top):
                from_maps[bottom] = compose(from_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            pass
    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            for bottom in _mappable_bottoms(top):
                to_maps[bottom] = compose(to_maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer (a ``Top``) cropping ``top_from`` to align with ``top_to``."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    assert (a == 1).all(), f"scale mismatch on crop (a = {a})"
    assert (b <= 0).all(), f"cannot crop negative offset (b = {b})"
    assert (np.round(b) == b).all(), f"cannot crop noninteger offset (b = {b})"
    offsets = [int(v) for v in -np.round(b).astype(int)]
    return net_spec.layers.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
