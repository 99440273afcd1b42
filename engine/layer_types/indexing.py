"""Layers driven by an index or selector blob: BatchReindex, Filter, Embed.

Their index/selector bottoms hold integers stored as floats. Caffe never propagates a
gradient into them: asking for one (``force_backward``, ``propagate_down``, or a learnable
layer below the index blob) is fatal in Caffe and a ``LayerError`` here, raised by the
backward pass. So these layers implement ``backward`` themselves (the gradient rules are
short: scatter-add for BatchReindex and Embed, copy-or-zero for Filter).
"""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import filled
from caffeseg.engine.layer_types.base import Layer, register


def _refuse(layer: Layer, propagate_down, index: int, what: str) -> None:
    if propagate_down[index]:
        raise layer.fail(f"cannot backpropagate to bottom {index} ({what}); Caffe refuses this "
                         f"gradient. Set propagate_down: false for it, or leave force_backward off")


@register
class BatchReindexLayer(Layer):
    """Caffe ``BatchReindex``: pick (and repeat or drop) items of a batch by index.

    ``top[i] = bottom0[idx[i]]``; the backward adds each top item's diff into the item it came
    from (repeated indices accumulate, unpicked items get zero).

    No parameters.

    Shape:
        - bottom 0 (data): ``(N, *)``
        - bottom 1 (indices): ``(M,)`` with values in ``[0, N)`` (no gradient)
        - top: ``(M, *)``
    """

    type = "BatchReindex"
    exact_bottoms = 2
    exact_tops = 1
    explicit_backward = True  # refuses the index gradient

    def reshape(self, bottom_shapes):
        data, index = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(index) != 1:
            raise self.fail(f"the index bottom must have 1 axis, got shape {index}")
        if not data:
            raise self.fail("the data bottom needs a batch axis (it has 0 axes)")
        return [(index[0],) + data[1:]]

    def _indices(self, data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if index.numel() and bool(((index < 0) | (index >= data.shape[0])).any()):
            bad = index[(index < 0) | (index >= data.shape[0])][0].item()
            raise self.fail(f"index {bad:g} is outside the batch of {data.shape[0]} items "
                            f"(indices must lie in [0, {data.shape[0]}))")
        return index.to(torch.int64)  # truncates, as Caffe's static_cast<int>

    def forward(self, bottoms, params):
        data, index = bottoms
        return [data.index_select(0, self._indices(data, index))]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        _refuse(self, propagate_down, 1, "the indices")
        if not propagate_down[0]:
            return [None, None], []
        data, index = bottoms
        diff = torch.zeros_like(data).index_add_(0, self._indices(data, index), top_diffs[0])
        return [diff, None], []


@register
class FilterLayer(Layer):
    """Caffe ``Filter``: keep the batch items whose selector is nonzero.

    Every bottom but the last is filtered the same way into the top of the same position;
    the backward copies each kept item's diff back and zeroes the others. Until the first
    forward has seen the selector, the tops have the bottoms' full batch size.

    No parameters.

    Shape:
        - bottoms 0..K-1: ``(N, *)`` each
        - bottom K (selector): ``(N, 1, ..., 1)`` (no gradient)
        - tops 0..K-1: ``(M, *)``, M = number of nonzero selector values
    """

    type = "Filter"
    min_bottoms = 2
    min_tops = 1
    explicit_backward = True  # refuses the index gradient

    def setup(self, bottom_shapes):
        if len(self.param.top) != len(bottom_shapes) - 1:
            raise self.fail(f"needs one top per filtered bottom: {len(bottom_shapes) - 1} filtered "
                            f"bottom(s) (the last bottom is the selector), {len(self.param.top)} top(s)")
        return []

    def reshape(self, bottom_shapes):
        selector = tuple(bottom_shapes[-1])
        if not selector:
            raise self.fail("the selector needs a batch axis (it has 0 axes)")
        if any(d != 1 for d in selector[1:]):
            raise self.fail(f"selector shape {selector}: every axis but the first must be 1")
        for i, shape in enumerate(bottom_shapes[:-1]):
            shape = tuple(shape)
            if not shape or shape[0] != selector[0]:
                raise self.fail(f"bottom {i} has shape {shape}; each bottom needs the selector's "
                                f"first dimension {selector[0]}")
        return [tuple(s) for s in bottom_shapes[:-1]]

    @staticmethod
    def _kept(selector: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(selector.reshape(selector.shape[0]) != 0).reshape(-1)

    def forward(self, bottoms, params):
        kept = self._kept(bottoms[-1])
        return [x.index_select(0, kept) for x in bottoms[:-1]]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        _refuse(self, propagate_down, len(bottoms) - 1, "the selector")
        kept = self._kept(bottoms[-1])
        grads = []
        for x, diff, down in zip(bottoms[:-1], top_diffs, propagate_down):
            grads.append(torch.zeros_like(x).index_copy_(0, kept, diff) if down else None)
        return grads + [None], []


@register
class EmbedLayer(Layer):
    """Caffe ``Embed``: a lookup table, ``top[..., :] = W[index] (+ b)``.

    Equivalent to an InnerProduct on one-hot vectors; the weight gradient adds each position's
    top diff into the row it read (repeated indices accumulate).

    Parameters (``embed_param``): ``num_output`` N (> 0), ``input_dim`` K (> 0, the number of
    rows), ``bias_term`` (default true), ``weight_filler``, ``bias_filler`` (default constant 0).
    Blobs: ``W (K, N)``, ``b (N,)``.

    Shape:
        - bottom (indices): any shape ``S``, integer values in ``[0, K)`` (no gradient)
        - top: ``S + (N,)``
    """

    type = "Embed"
    exact_bottoms = 1
    exact_tops = 1
    explicit_backward = True  # refuses the index gradient

    def setup(self, bottom_shapes):
        ep = self.param.embed_param
        self.num_output = ep.num_output
        self.input_dim = ep.input_dim
        if self.num_output <= 0:
            raise self.fail("embed_param.num_output must be positive")
        if self.input_dim <= 0:
            raise self.fail("embed_param.input_dim must be positive")
        self.bias_term = ep.bias_term
        params = [filled(self, ep.weight_filler if ep.HasField("weight_filler") else None,
                         (self.input_dim, self.num_output))]
        if self.bias_term:
            params.append(filled(self, ep.bias_filler if ep.HasField("bias_filler") else None,
                                 (self.num_output,)))
        return params

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0]) + (self.num_output,)]

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        flat = index.reshape(-1)
        rows = flat.to(torch.int64)
        bad = (flat != rows.to(flat.dtype)) | (rows < 0) | (rows >= self.input_dim)
        if flat.numel() and bool(bad.any()):
            raise self.fail(f"index {flat[bad][0].item():g} is not an integer in [0, {self.input_dim}) "
                            f"(embed_param.input_dim)")
        return rows

    def forward(self, bottoms, params):
        index = bottoms[0]
        y = params[0].index_select(0, self._rows(index))
        if self.bias_term:
            y = y + params[1]
        return [y.reshape(tuple(index.shape) + (self.num_output,))]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        _refuse(self, propagate_down, 0, "the indices")
        diff = top_diffs[0].reshape(-1, self.num_output)
        grads: list[torch.Tensor | None] = [None] * len(params)
        if param_propagate_down[0]:
            grads[0] = torch.zeros_like(params[0]).index_add_(0, self._rows(bottoms[0]), diff)
        if self.bias_term and param_propagate_down[1]:
            grads[1] = diff.sum(0)
        return [None], grads
