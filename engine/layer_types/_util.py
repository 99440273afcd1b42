"""Small helpers shared by the layer modules."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from caffeseg.engine import fillers
from caffeseg.engine.layer_types.base import Layer

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


def optional_ignore_label(param):
    """``param.ignore_label`` (AccuracyParameter / LossParameter) when it is set, else None."""
    return param.ignore_label if param.HasField("ignore_label") else None


def check_label_count(layer: Layer, scores: Sequence[int], labels: Sequence[int], axis: int) -> None:
    """A label blob holds one value per score position outside the class axis (outer × inner)."""
    expected = count(scores[:axis]) * count(scores[axis + 1:])
    if count(labels) != expected:
        raise layer.fail(f"labels {labels} must have {expected} values (outer×inner of scores {scores})")


def valid_and_safe_labels(labels: torch.Tensor, ignore_label) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells whose label is not ``ignore_label``, the labels with ignored cells set to class 0 so
    they can index a gather)."""
    if ignore_label is not None:
        valid = labels != ignore_label
    else:
        valid = torch.ones_like(labels, dtype=torch.bool)
    return valid, torch.where(valid, labels, torch.zeros_like(labels))


def legacy_dim(layer: Layer, shape: Sequence[int], index: int) -> int:
    """Caffe's ``Blob::LegacyShape`` (``num()``, ``channels()``, ``height()``, ``width()``): a
    missing axis reads as 1, and a blob with more than 4 axes is refused."""
    if len(shape) > 4:
        raise layer.fail(f"input of shape {tuple(shape)} has {len(shape)} axes; this layer reads it "
                         "as num/channels/height/width, which Caffe allows for at most 4 axes")
    return int(shape[index]) if index < len(shape) else 1


def no_backward(layer: Layer, propagate_down: Sequence[bool]) -> None:
    """Caffe's NOT_IMPLEMENTED ``Backward_cpu``: refuse a requested gradient, saying how to avoid it."""
    if any(propagate_down):
        raise NotImplementedError(
            f"layer '{layer.name}' ({layer.type}): Caffe defines no backward pass for {layer.type} "
            "(NOT_IMPLEMENTED), but the net asks for a gradient through it; drop force_backward, or keep "
            "layers that need gradients from feeding it (propagate_down: false)")
