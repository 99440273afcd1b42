"""Image resizing with the results pycaffe's ``caffe.io.resize_image`` gets, in numpy alone.

pycaffe resizes 1- and 3-channel images with ``skimage.transform.resize(..., mode='constant')``
and anything else with ``scipy.ndimage.zoom``; the engine does not depend on either, so this
module reproduces their arithmetic for interpolation orders 0 (nearest) and 1 (linear):

* ``skimage_resize``: pixel centers aligned (input coordinate ``(o + 0.5)·in/out − 0.5``), the
  image extended by zeros (``mode='constant'``, so upsampled borders blend towards 0); when
  shrinking, first a Gaussian blur of σ = max(0, (in/out − 1)/2) per axis (skimage's default
  anti-aliasing; zero-extended, radius ``int(4σ + 0.5)``), and the result clipped to the input's
  value range.
* ``ndimage_zoom``: corner pixels aligned (``o·(in − 1)/(out − 1)``), no blur, no clipping;
  like scipy's ``mode='constant'``, a sample gives 0 where that coordinate lands past the last
  pixel by a rounding error.
"""
from __future__ import annotations

import numpy as np


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return phi / phi.sum()


def _blur_axis(image: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return image
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    moved = np.moveaxis(image, axis, 0)
    padded = np.zeros((moved.shape[0] + 2 * radius,) + moved.shape[1:], dtype=np.float64)
    padded[radius:radius + moved.shape[0]] = moved
    out = np.zeros(moved.shape, dtype=np.float64)
    for k, weight in enumerate(kernel):
        out += weight * padded[k:k + moved.shape[0]]
    return np.moveaxis(out, 0, axis)


def _sample_axis(image: np.ndarray, axis: int, coords: np.ndarray, order: int) -> np.ndarray:
    """``image`` sampled at fractional ``coords`` along ``axis``, linearly (order 1) or at the
    nearest sample (order 0), the signal being 0 beyond both ends."""
    moved = np.moveaxis(image, axis, 0)
    n = moved.shape[0]
    zero = np.zeros((1,) + moved.shape[1:])
    padded = np.concatenate([zero, moved, zero])  # index i of the image is i + 1 here
    if order == 0:
        index = np.clip(np.floor(coords + 0.5).astype(np.int64), -1, n)
        out = padded[index + 1]
    else:
        low = np.floor(coords).astype(np.int64)
        frac = (coords - low).reshape((-1,) + (1,) * (moved.ndim - 1))
        low, high = np.clip(low, -1, n), np.clip(low + 1, -1, n)
        out = (1.0 - frac) * padded[low + 1] + frac * padded[high + 1]
    return np.moveaxis(out, 0, axis)


def _check_order(order: int) -> int:
    order = int(order)
    if order not in (0, 1):
        raise ValueError(f"interp_order {order} is not supported: use 0 (nearest) or 1 (linear)")
    return order


def skimage_resize(image: np.ndarray, size, order: int = 1) -> np.ndarray:
    """``skimage.transform.resize(image, size, order=order, mode='constant')`` of an H×W×K
    float image (K kept), as float64."""
    order = _check_order(order)
    source = np.asarray(image, dtype=np.float64)
    size = [int(d) for d in size]
    out = source
    if any(new < old for new, old in zip(size, source.shape)):  # float input: also for order 0
        for axis, new in enumerate(size):
            out = _blur_axis(out, axis, max(0.0, (source.shape[axis] / new - 1.0) / 2.0))
    for axis, new in enumerate(size):
        factor = source.shape[axis] / new
        out = _sample_axis(out, axis, (np.arange(new) + 0.5) * factor - 0.5, order)
    return np.clip(out, source.min(), source.max())


def ndimage_zoom(image: np.ndarray, size, order: int = 1) -> np.ndarray:
    """``scipy.ndimage.zoom(image, (h/H, w/W, 1), order=order)`` of an H×W×K image, as float64."""
    order = _check_order(order)
    out = np.asarray(image, dtype=np.float64)
    for axis, new in enumerate(int(d) for d in size):
        old = out.shape[axis]
        if new == old:
            continue
        coords = np.arange(new) * ((old - 1) / (new - 1)) if new > 1 else np.zeros(1)
        # scipy's 'constant' mode gives cval (0) past the last sample, even by a rounding error
        # (o·(in−1)/(out−1) can exceed in−1 by an ulp at the last pixel)
        coords = np.where(coords > old - 1, old + 1.0, coords)
        out = _sample_axis(out, axis, coords, order)
    return out
