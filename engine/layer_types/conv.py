"""Convolution and Deconvolution (Caffe's ``ConvolutionLayer``, ``DeconvolutionLayer``).

Shapes follow Caffe exactly: the convolution output size uses C++ integer division (a
numerator in (-stride, 0) still gives one output, which PyTorch refuses, so the input is
zero-extended to make room), and Deconvolution keeps Caffe's weight layout
[C_in, num_output/group, k...], which is PyTorch's ConvTranspose layout.

CPU shapes where PyTorch's default kernels are slower (FCN's fc6, a large kernel on a tiny
map; fc7, a 1×1 with thousands of channels; 3×3 stride-1 convolutions with many channels, by
Winograd F(2×2, 3×3)) go through ``fast_conv``, chosen by shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from caffeseg.engine.layer_types import fast_conv
from caffeseg.engine.layer_types._util import canonical_axis, count, filled
from caffeseg.engine.layer_types.base import Layer, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _ConvolutionBase(Layer):
    min_bottoms = 1

    def _read_geometry(self, ndim: int) -> None:
        cp = self.param.convolution_param
        self.axis = canonical_axis(self, cp.axis, ndim)
        d = ndim - self.axis - 1
        if d < 1:
            raise self.fail(f"needs spatial axes after channel axis {self.axis}")
        self.nspatial = d

        def per_dim(values, default, what):
            values = list(values)
            if not values:
                return [default] * d
            if len(values) == 1:
                return values * d
            if len(values) != d:
                raise self.fail(f"{what} has {len(values)} values for {d} spatial dims")
            return values

        if cp.HasField("kernel_h") or cp.HasField("kernel_w"):
            if d != 2:
                raise self.fail("kernel_h/kernel_w are for 2-D convolution only")
            if len(cp.kernel_size):
                raise self.fail("give either kernel_size or kernel_h/kernel_w, not both")
            if not (cp.HasField("kernel_h") and cp.HasField("kernel_w")):
                raise self.fail("kernel_h and kernel_w must both be given")
            self.kernel = [cp.kernel_h, cp.kernel_w]
        else:
            if not len(cp.kernel_size):
                raise self.fail("kernel_size (or kernel_h and kernel_w) is required")
            self.kernel = per_dim(cp.kernel_size, 0, "kernel_size")
        if any(k <= 0 for k in self.kernel):
            raise self.fail(f"kernel dims must be > 0, got {self.kernel}")
        if cp.HasField("stride_h") or cp.HasField("stride_w"):
            if d != 2 or len(cp.stride):
                raise self.fail("stride_h/stride_w are 2-D only and exclude stride")
            self.stride = [cp.stride_h, cp.stride_w]
        else:
            self.stride = per_dim(cp.stride, 1, "stride")
        if any(s <= 0 for s in self.stride):
            raise self.fail(f"stride dims must be > 0, got {self.stride} "
                            "(stride_h and stride_w must both be given)")
        if cp.HasField("pad_h") or cp.HasField("pad_w"):
            if d != 2 or len(cp.pad):
                raise self.fail("pad_h/pad_w are 2-D only and exclude pad")
            self.pad = [cp.pad_h, cp.pad_w]
        else:
            self.pad = per_dim(cp.pad, 0, "pad")
        self.dilation = per_dim(cp.dilation, 1, "dilation")
        self.dilation = [x if x > 0 else 1 for x in self.dilation]
        if d not in _CONV:
            raise self.fail(f"{d}-D convolution is not supported (1-, 2- and 3-D are)")
        self.group = cp.group
        self.num_output = cp.num_output
        if self.num_output <= 0:
            raise self.fail("num_output must be > 0")
        if self.group <= 0 or self.num_output % self.group:
            raise self.fail(f"num_output {self.num_output} is not divisible by group {self.group}")
        self.bias_term = cp.bias_term

    def _check_bottoms(self, bottom_shapes):
        if len(self.param.top) != len(bottom_shapes):
            raise self.fail(f"needs as many tops as bottoms ({len(bottom_shapes)})")
        first = tuple(bottom_shapes[0])
        for s in bottom_shapes[1:]:
            if tuple(s) != first:
                raise self.fail(f"all bottoms must have the same shape; got {first} and {tuple(s)}")

    def setup(self, bottom_shapes):
        self._check_bottoms(bottom_shapes)
        shape = bottom_shapes[0]
        self._read_geometry(len(shape))
        self.channels = shape[self.axis]
        if self.channels % self.group:
            raise self.fail(f"input channels {self.channels} not divisible by group {self.group}")
        cp = self.param.convolution_param
        weight = filled(self, cp.weight_filler if cp.HasField("weight_filler") else None,
                        self.weight_shape())
        params = [weight]
        if self.bias_term:
            params.append(filled(self, cp.bias_filler if cp.HasField("bias_filler") else None,
                                 (self.num_output,)))
        return params

    def reshape(self, bottom_shapes):
        self._check_bottoms(bottom_shapes)
        shape = tuple(bottom_shapes[0])
        if shape[self.axis] != self.channels:
            raise self.fail(f"input has {shape[self.axis]} channels, the weights expect {self.channels}")
        out = [self.output_size(shape[self.axis + 1 + i], i) for i in range(self.nspatial)]
        if any(o <= 0 for o in out):
            raise self.fail(f"input {shape} is too small for the kernel (output {out})")
        return [shape[:self.axis] + (self.num_output,) + tuple(out)] * len(bottom_shapes)

    def forward(self, bottoms, params):
        weight = params[0]
        bias = params[1] if self.bias_term else None
        tops = []
        for x in bottoms:
            lead = x.shape[:self.axis]
            x4 = x.reshape((count(lead),) + tuple(x.shape[self.axis:]))
            y = self.compute(x4, weight, bias)
            tops.append(y.reshape(tuple(lead) + tuple(y.shape[1:])))
        return tops


@register
class ConvolutionLayer(_ConvolutionBase):
    """Caffe ``Convolution`` (1-, 2- or 3-D; several bottoms share the weights, one top each).

    Parameters (``convolution_param``): ``num_output`` (> 0), ``kernel_size`` or ``kernel_h``/``kernel_w``,
    ``stride`` (default 1), ``pad`` (default 0), ``dilation`` (default 1), each once or per spatial
    axis (``_h``/``_w`` forms for 2-D), ``group`` (default 1), ``bias_term`` (default true),
    ``weight_filler``/``bias_filler`` (default constant 0), ``axis`` (channel axis, default 1).
    Blobs: ``W (num_output, C / group, *kernel)``, ``b (num_output,)``.

    Shape:
        - bottom: ``(N, C, *spatial)``
        - top: ``(N, num_output, *out)``,
          ``out = (size + 2·pad − dilation·(kernel − 1) − 1) / stride + 1`` (C++ integer division)"""

    type = "Convolution"
    #: fast_conv's kernels add the weight gradient into the weight's diff (engine.Net's backward)
    adds_param_diffs = True

    def weight_shape(self):
        return (self.num_output, self.channels // self.group, *self.kernel)

    def output_size(self, size: int, i: int) -> int:
        ext = self.dilation[i] * (self.kernel[i] - 1) + 1
        num = size + 2 * self.pad[i] - ext
        return int(num / self.stride[i]) + 1  # C++ int division truncates toward zero

    def compute(self, x, weight, bias):
        # Caffe's truncating division can promise an output whose window runs past the input
        # (missing taps read 0); extend the input with zeros so PyTorch agrees.
        extra = []
        for i in range(self.nspatial):
            size = x.shape[2 + i]
            out = self.output_size(size, i)
            need = (out - 1) * self.stride[i] + self.dilation[i] * (self.kernel[i] - 1) + 1
            extra.append(max(0, need - (size + 2 * self.pad[i])))
        if any(extra):
            pads = []
            for e in reversed(extra):
                pads += [0, e]
            x = F.pad(x, pads)
        if self.nspatial == 2:
            fast = fast_conv.choose(x, weight, self.stride, self.pad, self.dilation, self.group)
            if fast is not None:
                return fast(x, weight, bias)
        return _CONV[self.nspatial](x, weight, bias, self.stride, self.pad, self.dilation, self.group)


@register
class DeconvolutionLayer(_ConvolutionBase):
    """Caffe ``Deconvolution`` (transposed convolution; FCN's upsampling).

    Parameters (``convolution_param``): ``num_output`` (> 0), ``kernel_size`` or ``kernel_h``/``kernel_w``,
    ``stride`` (default 1), ``pad`` (default 0), ``dilation`` (default 1), each once or per spatial
    axis (``_h``/``_w`` forms for 2-D), ``group`` (default 1), ``bias_term`` (default true),
    ``weight_filler``/``bias_filler`` (default constant 0), ``axis`` (channel axis, default 1).
    Blobs: ``W (C, num_output / group, *kernel)`` (Caffe's and PyTorch's ConvTranspose layout),
    ``b (num_output,)``.

    Shape:
        - bottom: ``(N, C, *spatial)``
        - top: ``(N, num_output, *out)``, ``out = stride·(size − 1) + dilation·(kernel − 1) + 1 − 2·pad``"""

    type = "Deconvolution"

    def weight_shape(self):
        return (self.channels, self.num_output // self.group, *self.kernel)

    def output_size(self, size: int, i: int) -> int:
        return self.stride[i] * (size - 1) + self.dilation[i] * (self.kernel[i] - 1) + 1 - 2 * self.pad[i]

    def compute(self, x, weight, bias):
        return _CONV_T[self.nspatial](x, weight, bias, self.stride, self.pad, 0, self.group, self.dilation)
