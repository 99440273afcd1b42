"""Small helpers shared by the layer modules."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from engine import fillers
from engine.layers.base import Layer

FLT_MIN = 1.17549435e-38
FLT_MAX = 3.402823466e38


def canonical_axis(layer: Layer, axis: int, num_axes: int) -> int:
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is fatal."""
    if not -num_axes <= axis < num_axes:
        raise layer.fail(f"axis {axis} out of range for a {num_axes}-axis blob")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


def filled(layer: Layer, filler, shape) -> torch.Tensor:
    try:
        return fillers.fill(filler, shape)
    except fillers.FillerError as err:
        raise layer.fail(str(err)) from None
