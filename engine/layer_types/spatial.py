"""Layers that gather sliding windows of the spatial axes: Im2col, SPP.

Im2col writes Caffe's column buffer as a blob (the layout a Convolution multiplies by its
weights); SPP pools a pyramid of grids, each with Caffe's own Pooling layer, so it inherits
Pooling's output-size and padding rules. Both are copies and maxima/averages that autograd
differentiates exactly as Caffe's col2im and pooling backward do.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from caffeseg.engine.layer_types._util import canonical_axis, count
from caffeseg.engine.layer_types.base import Layer, LayerError, register
from caffeseg.engine.layer_types.pooling import PoolingLayer
from caffeseg.engine.proto import caffe_pb2


def _per_axis(layer: Layer, values, default: int | None, what: str, naxes: int) -> list[int]:
    """A repeated conv field: empty (default), one value for every axis, or one per axis."""
    values = [int(v) for v in values]
    if not values and default is not None:
        return [default] * naxes
    if len(values) == 1:
        return values * naxes
    if len(values) != naxes:
        raise layer.fail(f"convolution_param.{what} must be given once, or once per spatial axis "
                         f"({len(values)} given for {naxes} spatial axes)")
    return values


def _pair(layer: Layer, cp, name: str, naxes: int, repeated) -> list[int] | None:
    """``NAME_h``/``NAME_w`` when either is set (2-D only, excludes the repeated field)."""
    if not (cp.HasField(f"{name}_h") or cp.HasField(f"{name}_w")):
        return None
    if naxes != 2:
        raise layer.fail(f"{name}_h and {name}_w can only be used with 2 spatial axes, the bottom has {naxes}")
    if len(repeated):
        raise layer.fail(f"give either {name}_h/{name}_w or the repeated field, not both")
    return [int(getattr(cp, f"{name}_h")), int(getattr(cp, f"{name}_w"))]


@register
class Im2colLayer(Layer):
    """Caffe ``Im2col``: unroll every kernel window into a column, as Convolution does internally.

    Output channel ``(c·kh + i)·kw + j`` at position ``(y, x)`` holds input channel c at
    ``(y·stride_h − pad_h + i·dilation_h, x·stride_w − pad_w + j·dilation_w)`` (zero outside the
    input). The backward (col2im) sums each column's diff back onto the pixels it read.

    Parameters (``convolution_param``): ``kernel_size`` or ``kernel_h``/``kernel_w`` (required,
    > 0), ``stride`` or ``stride_h``/``stride_w`` (default 1), ``pad`` or ``pad_h``/``pad_w``
    (default 0), ``dilation`` (default 1), ``axis`` (the channel axis, default 1);
    ``force_nd_im2col`` chooses a Caffe kernel only and gives the same numbers.

    Shape:
        - bottom: ``(*lead, C, *spatial)``, spatial axes after ``axis``
        - top: ``(*lead, C · prod(kernel), *out)``,
          ``out = (size + 2·pad − dilation·(kernel − 1) − 1) / stride + 1`` (C++ integer division)
    """

    type = "Im2col"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        cp = self.param.convolution_param
        ndim = len(bottom_shapes[0])
        self.axis = canonical_axis(self, cp.axis, ndim)
        naxes = ndim - self.axis - 1
        if naxes < 1:
            raise self.fail(f"needs at least one spatial axis after channel axis {self.axis} "
                            f"(bottom {tuple(bottom_shapes[0])})")
        kernel = _pair(self, cp, "kernel", naxes, cp.kernel_size)
        if kernel is None:
            if not len(cp.kernel_size):
                raise self.fail("convolution_param needs kernel_size (or kernel_h and kernel_w)")
            kernel = _per_axis(self, cp.kernel_size, None, "kernel_size", naxes)
        stride = _pair(self, cp, "stride", naxes, cp.stride) or _per_axis(self, cp.stride, 1, "stride", naxes)
        pad = _pair(self, cp, "pad", naxes, cp.pad) or _per_axis(self, cp.pad, 0, "pad", naxes)
        dilation = _per_axis(self, cp.dilation, 1, "dilation", naxes)
        for what, values in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
            if any(v <= 0 for v in values):
                raise self.fail(f"{what} dimensions must be positive, got {values}")
        self.kernel, self.stride, self.pad, self.dilation = kernel, stride, pad, dilation
        return []

    def _out_sizes(self, shape) -> list[int]:
        outs = []
        for i, size in enumerate(shape[self.axis + 1:]):
            extent = self.dilation[i] * (self.kernel[i] - 1) + 1
            numerator = size + 2 * self.pad[i] - extent
            out = int(numerator / self.stride[i]) + 1  # C++ division truncates toward zero
            if out <= 0:
                raise self.fail(f"spatial axis {self.axis + 1 + i} of size {size} is too small for kernel "
                                f"extent {extent} with pad {self.pad[i]} (bottom {tuple(shape)})")
            outs.append(out)
        return outs

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        if len(shape) - self.axis - 1 != len(self.kernel):
            raise self.fail(f"bottom {shape} has {len(shape) - self.axis - 1} spatial axes, the layer "
                            f"was set up for {len(self.kernel)}")
        outs = self._out_sizes(shape)
        return [shape[:self.axis] + (shape[self.axis] * math.prod(self.kernel),) + tuple(outs)]

    def forward(self, bottoms, params):
        x = bottoms[0]
        lead = tuple(x.shape[:self.axis])
        channels = x.shape[self.axis]
        spatial = tuple(x.shape[self.axis + 1:])
        outs = self._out_sizes(tuple(x.shape))
        x = x.reshape((count(lead), channels) + spatial)
        # pad left by `pad`, right to exactly the extent the last window reaches (zero pixels,
        # as im2col reads outside the input), or not at all where the input reaches further
        pads = []
        for i in reversed(range(len(spatial))):
            reach = (outs[i] - 1) * self.stride[i] + self.dilation[i] * (self.kernel[i] - 1) + 1
            pads += [self.pad[i], max(reach - spatial[i] - self.pad[i], 0)]
        if any(pads):
            x = F.pad(x, pads)
        if len(spatial) == 2:
            cols = F.unfold(x, self.kernel, dilation=self.dilation, stride=self.stride)
        else:
            windows = []
            for offsets in itertools.product(*(range(k) for k in self.kernel)):
                index = (slice(None), slice(None)) + tuple(
                    slice(o * d, o * d + (n - 1) * s + 1, s)
                    for o, d, n, s in zip(offsets, self.dilation, outs, self.stride))
                windows.append(x[index])
            cols = torch.stack(windows, dim=2)
        return [cols.reshape(lead + (channels * math.prod(self.kernel),) + tuple(outs))]


_SPP = caffe_pb2.SPPParameter
_POOL_OF_SPP = {_SPP.MAX: caffe_pb2.PoolingParameter.MAX, _SPP.AVE: caffe_pb2.PoolingParameter.AVE,
                _SPP.STOCHASTIC: caffe_pb2.PoolingParameter.STOCHASTIC}


@register
class SPPLayer(Layer):
    """Caffe ``SPP`` (spatial pyramid pooling): pool the map on grids of 1, 2×2, 4×4, … bins and
    concatenate the flattened results, giving a fixed-length vector for any input size.

    Level l has ``2^l`` bins per axis: kernel = stride = ``ceil(size / 2^l)``, pad =
    ``(kernel·2^l − size + 1) // 2``, pooled by Caffe's Pooling rules (so a level with more bins
    than pixels is refused, as Caffe's Pooling refuses pad ≥ kernel).

    Parameters (``spp_param``): ``pyramid_height`` (levels, ≥ 1), ``pool`` (MAX (default) or AVE;
    STOCHASTIC is not implemented, as for Pooling).

    Shape:
        - bottom: ``(N, C, H, W)``
        - top: ``(N, C · Σ_l bins_l)`` with ``bins_l = 4^l``; with ``pyramid_height`` 1 the single
          pooling's output ``(N, C, 1, 1)``
    """

    type = "SPP"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        sp = self.param.spp_param
        if sp.pyramid_height < 1:
            raise self.fail("spp_param.pyramid_height must be at least 1")
        self.levels = int(sp.pyramid_height)
        self._pools: dict[tuple[int, int], list[PoolingLayer]] = {}
        return []

    def _level_param(self, level: int, height: int, width: int) -> caffe_pb2.LayerParameter:
        bins = 2 ** level
        lp = caffe_pb2.LayerParameter(name=f"{self.name} level {level}", type="Pooling")
        pp = lp.pooling_param
        kernel_h = math.ceil(height / bins)
        kernel_w = math.ceil(width / bins)
        pp.kernel_h, pp.kernel_w = kernel_h, kernel_w
        pp.stride_h, pp.stride_w = kernel_h, kernel_w
        pp.pad_h = (kernel_h * bins - height + 1) // 2
        pp.pad_w = (kernel_w * bins - width + 1) // 2
        pp.pool = _POOL_OF_SPP[self.param.spp_param.pool]
        lp.top.append("pooled")
        return lp

    def _pyramid(self, shape) -> list[PoolingLayer]:
        if len(shape) != 4:
            raise self.fail(f"input must have 4 axes (num, channels, height, width), got {tuple(shape)}")
        height, width = int(shape[2]), int(shape[3])
        if height <= 0 or width <= 0:
            raise self.fail(f"input dimensions cannot be zero (bottom {tuple(shape)})")
        pools = self._pools.get((height, width))
        if pools is None:
            pools = []
            for level in range(self.levels):
                pool = PoolingLayer(self._level_param(level, height, width), self.phase)
                try:
                    pool.setup([tuple(shape)])
                    pool.reshape([tuple(shape)])
                except LayerError as err:
                    raise self.fail(f"pyramid level {level} ({2 ** level}x{2 ** level} bins) on a "
                                    f"{height}x{width} input: {err}") from None
                pools.append(pool)
            self._pools[(height, width)] = pools
        return pools

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        pools = self._pyramid(shape)
        pooled = [pool.reshape([shape])[0] for pool in pools]
        if self.levels == 1:
            return [pooled[0]]
        return [(shape[0], sum(count(p, 1) for p in pooled))]

    def forward(self, bottoms, params):
        x = bottoms[0]
        pools = self._pyramid(tuple(x.shape))
        if self.levels == 1:
            return pools[0].forward([x], [])
        return [torch.cat([pool.forward([x], [])[0].reshape(x.shape[0], -1) for pool in pools], dim=1)]
