"""ArgMax: the top-k indices (and optionally values) of each item or along an axis (Caffe's
argmax_layer.cpp). Forward only: Caffe's backward is NOT_IMPLEMENTED."""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import canonical_axis, count, no_backward
from caffeseg.engine.layer_types.base import Layer, register


def _top_k_caffe_order(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries along the last dim, ordered as Caffe's partial_sort of
    (value, index) pairs with std::greater: larger values first, ties to the larger index."""
    size = values.shape[-1]
    # a stable descending sort of the reversed row keeps equal values in reverse index order
    ordered, reversed_index = torch.sort(values.flip(-1), dim=-1, descending=True, stable=True)
    return ordered[..., :k], (size - 1) - reversed_index[..., :k]


@register
class ArgMaxLayer(Layer):
    """``ArgMax`` with ``argmax_param``: ``top_k`` (default 1), ``out_max_val`` (default false),
    ``axis`` (optional).

    Without ``axis`` each item (axis 0) is flattened: bottom (N, *) → top (N, 1, k, 1, ...) of
    indices, or (N, 2, k, 1, ...) with indices in [:, 0] and values in [:, 1] when out_max_val;
    the top has max(3, bottom axes) axes. With ``axis`` the top is the bottom's shape with
    that axis cut to k, holding indices, or the values when out_max_val. Indices are floats.
    Backward: none (Caffe's is NOT_IMPLEMENTED; a requested gradient is an error)."""

    type = "ArgMax"
    exact_bottoms = 1
    exact_tops = 1
    explicit_backward = True

    def setup(self, bottom_shapes):
        ap = self.param.argmax_param
        self.top_k = ap.top_k
        self.out_max_val = ap.out_max_val
        self.has_axis = ap.HasField("axis")
        if self.top_k < 1:
            raise self.fail("argmax_param.top_k must be at least 1")
        return []

    def _axis(self, shape) -> int:
        return canonical_axis(self, self.param.argmax_param.axis, len(shape))

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) < 1:
            raise self.fail("the input needs at least one axis")
        if self.has_axis:
            axis = self._axis(shape)
            if self.top_k > shape[axis]:
                raise self.fail(f"top_k {self.top_k} exceeds the size {shape[axis]} of axis {axis}")
            return [shape[:axis] + (self.top_k,) + shape[axis + 1:]]
        per_item = count(shape, 1)
        if self.top_k > per_item:
            raise self.fail(f"top_k {self.top_k} exceeds the {per_item} values per item of input {shape}")
        top = [1] * max(3, len(shape))
        top[0] = shape[0]
        top[1] = 2 if self.out_max_val else 1
        top[2] = self.top_k
        return [tuple(top)]

    def forward(self, bottoms, params):
        x = bottoms[0]
        k = self.top_k
        if self.has_axis:
            axis = self._axis(x.shape)
            values, index = _top_k_caffe_order(x.movedim(axis, -1), k)
            chosen = values if self.out_max_val else index.to(x.dtype)
            return [chosen.movedim(-1, axis).contiguous()]
        top_shape = self.reshape([tuple(x.shape)])[0]
        values, index = _top_k_caffe_order(x.reshape(x.shape[0], -1), k)
        rows = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
        return [torch.stack(rows, dim=1).reshape(top_shape)]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        no_backward(self, propagate_down)
        return [None], []
