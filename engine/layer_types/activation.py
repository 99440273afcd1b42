"""Element-wise (neuron) layers: ReLU, Sigmoid, TanH, Power, Dropout,
and AbsVal, BNLL, Clip, ELU, Exp, Log, PReLU, Swish, Threshold with Caffe's own backward formulas."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffeseg.engine import rng
from caffeseg.engine.layer_types._util import filled, legacy_dim, no_backward
from caffeseg.engine.layer_types.base import Layer
from caffeseg.engine.layer_types.base import register
from caffeseg.engine.proto import caffe_pb2


class _ElementWise(Layer):
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]


@register
class ReLULayer(_ElementWise):
    """Caffe ``ReLU``: ``y = max(x, 0) + negative_slope·min(x, 0)``; gradient 0 at x = 0 (slope at 0 when leaky).

    Parameters (``relu_param``): ``negative_slope`` (default 0).

    Shape: bottom ``(*)``, top the same shape."""

    type = "ReLU"

    def setup(self, bottom_shapes):
        self.slope = self.param.relu_param.negative_slope
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.slope == 0:
            return [F.relu(x)]  # gradient 0 at x == 0, as in Caffe
        # leaky_relu uses the slope at x == 0 too, as Caffe does
        return [F.leaky_relu(x, self.slope)]


@register
class SigmoidLayer(_ElementWise):
    """Caffe ``Sigmoid``: ``y = 1 / (1 + exp(−x))``.

    No parameters.

    Shape: bottom ``(*)``, top the same shape."""

    type = "Sigmoid"

    def forward(self, bottoms, params):
        return [torch.sigmoid(bottoms[0])]


@register
class TanHLayer(_ElementWise):
    """Caffe ``TanH``: ``y = tanh(x)``.

    No parameters.

    Shape: bottom ``(*)``, top the same shape."""

    type = "TanH"

    def forward(self, bottoms, params):
        return [torch.tanh(bottoms[0])]


@register
class PowerLayer(_ElementWise):
    """Caffe ``Power``: ``y = (shift + scale·x)^power``; a constant (zero gradient) when ``power·scale`` is 0.

    Parameters (``power_param``): ``power`` (default 1), ``scale`` (default 1), ``shift`` (default 0).

    Shape: bottom ``(*)``, top the same shape."""

    type = "Power"

    def setup(self, bottom_shapes):
        pp = self.param.power_param
        self.power, self.scale, self.shift = pp.power, pp.scale, pp.shift
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.power * self.scale == 0:
            value = 1.0 if self.power == 0 else self.shift ** self.power
            return [x * 0 + value]  # constant output, zero gradient
        base = x * self.scale + self.shift if self.scale != 1 else x + self.shift
        if self.power == 1:
            return [base]
        if self.power == 2:
            return [base * base]
        return [torch.pow(base, self.power)]


@register
class DropoutLayer(_ElementWise):
    """Caffe ``Dropout``: TRAIN: ``y = x·mask / (1 − ratio)`` with mask ~ Bernoulli(1 − ratio) from the engine RNG;
    TEST: ``y = x``.

    Parameters (``dropout_param``): ``dropout_ratio`` (default 0.5, in [0, 1)).

    Shape: bottom ``(*)``, top the same shape."""

    type = "Dropout"

    def setup(self, bottom_shapes):
        self.ratio = self.param.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise self.fail(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        if self.phase != caffe_pb2.TRAIN:
            return [x.clone()]  # TEST: identity (a copy, so in-place users do not alias)
        # uniform < 1 − ratio is Bernoulli(1 − ratio) as Caffe draws it (a uniform against the
        # threshold); torch's rand is 2.5x faster than bernoulli_ on CPU (4 vs 7 ms on fc6's top)
        keep = torch.rand(x.shape, generator=rng.generator(x.device), device=x.device) < (1.0 - self.ratio)
        return [x * (keep * self.scale)]


# -- the other BVLC neuron layers: Caffe's own backward formulas (explicit) ---------------
class _CaffeNeuron(_ElementWise):
    """An element-wise layer whose backward is Caffe's formula, not autograd's.

    Caffe's in-place backward reads ``bottom[0]->cpu_data()``, which by then holds the top;
    ``backward_input`` reproduces that for the layers whose gradient reads the input."""

    explicit_backward = True

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.in_place = len(param.bottom) == 1 and len(param.top) == 1 and param.bottom[0] == param.top[0]

    def backward_input(self, bottoms, tops):
        """The values Caffe's Backward_cpu reads as the bottom data."""
        return tops[0] if self.in_place else bottoms[0]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        if not propagate_down[0]:
            return [None], []
        return [top_diffs[0] * self.gradient(bottoms, tops)], []

    def gradient(self, bottoms, tops) -> torch.Tensor:
        """dy/dx as Caffe computes it, element-wise."""
        raise NotImplementedError


@register
class AbsValLayer(_CaffeNeuron):
    """``AbsVal``: y = |x|; dx = sign(x)·dy with sign(0) = 0. In-place is refused (Caffe needs x).

    Shape: bottom (*), top same shape."""

    type = "AbsVal"
    allows_in_place = False

    def forward(self, bottoms, params):
        return [torch.abs(bottoms[0])]

    def gradient(self, bottoms, tops):
        return torch.sign(bottoms[0])


_BNLL_THRESHOLD = 50.0


@register
class BNLLLayer(_CaffeNeuron):
    """``BNLL`` (binomial normal log likelihood): y = x + log(1 + e^-x) for x > 0, else log(1 + e^x);
    dx = dy·e^m/(e^m + 1) with m = min(x, 50).

    Shape: bottom (*), top same shape. In place, Caffe's backward reads y where x was."""

    type = "BNLL"

    def forward(self, bottoms, params):
        x = bottoms[0]
        # both of Caffe's branches in one form: max(x, 0) + log(1 + e^-|x|)
        return [torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))]

    def gradient(self, bottoms, tops):
        e = torch.exp(torch.clamp(self.backward_input(bottoms, tops), max=_BNLL_THRESHOLD))
        return e / (e + 1.0)


@register
class ClipLayer(_CaffeNeuron):
    """``Clip``: y = max(min, min(x, max)) with ``clip_param { min max }`` (both required);
    dx = dy where min <= x <= max (bounds included), else 0.

    Shape: bottom (*), top same shape. In place, Caffe's backward tests the clipped values,
    which are always inside the bounds, so every gradient passes; that is reproduced."""

    type = "Clip"

    def setup(self, bottom_shapes):
        cp = self.param.clip_param
        missing = [f for f in ("min", "max") if not cp.HasField(f)]
        if missing:
            raise self.fail(f"clip_param needs {' and '.join(missing)} (required fields)")
        self.low, self.high = cp.min, cp.max
        return []

    def forward(self, bottoms, params):
        # max(min, min(x, max)): with min > max every value becomes min, as in Caffe
        return [torch.clamp(torch.clamp(bottoms[0], max=self.high), min=self.low)]

    def gradient(self, bottoms, tops):
        x = self.backward_input(bottoms, tops)
        return ((x >= self.low) & (x <= self.high)).to(x.dtype)


@register
class ELULayer(_CaffeNeuron):
    """``ELU``: y = max(x, 0) + alpha·(e^min(x, 0) − 1) (``elu_param.alpha``, default 1);
    dx = dy for x > 0, else dy·(alpha + y).

    Shape: bottom (*), top same shape."""

    type = "ELU"

    def setup(self, bottom_shapes):
        self.alpha = self.param.elu_param.alpha
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [torch.clamp(x, min=0) + self.alpha * (torch.exp(torch.clamp(x, max=0)) - 1.0)]

    def gradient(self, bottoms, tops):
        x, y = self.backward_input(bottoms, tops), tops[0]
        return torch.where(x > 0, torch.ones_like(y), self.alpha + y)


def _log_base(layer: Layer, base: float, what: str) -> float:
    """ln(base), with base −1 meaning e (Exp/Log parameters)."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.fail(f"{what}.base must be strictly positive (or -1 for e), got {base}")
    value = math.log(base)
    if math.isinf(value):
        raise layer.fail(f"{what}.base {base} gives log(base) = {value}")
    return value


@register
class ExpLayer(_CaffeNeuron):
    """``Exp``: y = base^(shift + scale·x) (``exp_param``: base −1 = e, scale 1, shift 0);
    dx = dy·y·ln(base)·scale.

    Shape: bottom (*), top same shape."""

    type = "Exp"

    def setup(self, bottom_shapes):
        ep = self.param.exp_param
        log_base = _log_base(self, ep.base, "exp_param")
        self.inner_scale = log_base * ep.scale
        if ep.shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = ep.base ** ep.shift if ep.base != -1 else math.exp(ep.shift)
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        y = torch.exp(x) if self.inner_scale == 1 else torch.exp(x * self.inner_scale)
        return [y if self.outer_scale == 1 else y * self.outer_scale]

    def gradient(self, bottoms, tops):
        return tops[0] if self.inner_scale == 1 else tops[0] * self.inner_scale


@register
class LogLayer(_CaffeNeuron):
    """``Log``: y = log_base(shift + scale·x) (``log_param``: base −1 = e, scale 1, shift 0);
    dx = dy·scale / ((shift + scale·x)·ln(base)).

    Shape: bottom (*), top same shape. In place, Caffe's backward reads y where x was."""

    type = "Log"

    def setup(self, bottom_shapes):
        lp = self.param.log_param
        log_base = _log_base(self, lp.base, "log_param")
        if log_base == 0:
            raise self.fail(f"log_param.base {lp.base} gives 1/log(base) = inf")
        self.base_scale = 1.0 / log_base
        self.scale, self.shift = lp.scale, lp.shift
        self.backward_scale = lp.scale / log_base
        return []

    def _argument(self, x):
        if self.scale != 1:
            x = x * self.scale
        return x + self.shift if self.shift != 0 else x

    def forward(self, bottoms, params):
        y = torch.log(self._argument(bottoms[0]))
        return [y if self.base_scale == 1 else y * self.base_scale]

    def gradient(self, bottoms, tops):
        inverse = 1.0 / self._argument(self.backward_input(bottoms, tops))
        return inverse if self.backward_scale == 1 else inverse * self.backward_scale


@register
class SwishLayer(_CaffeNeuron):
    """``Swish``: y = x·sigmoid(beta·x) (``swish_param.beta``, default 1);
    dx = dy·(beta·y + sigmoid(beta·x)·(1 − beta·y)).

    Shape: bottom (*), top same shape."""

    type = "Swish"

    def setup(self, bottom_shapes):
        self.beta = self.param.swish_param.beta
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [x * torch.sigmoid(x * self.beta)]

    def gradient(self, bottoms, tops):
        # the sigmoid of the forward input: Caffe keeps it in an internal blob, in place too
        s = torch.sigmoid(bottoms[0] * self.beta)
        by = tops[0] * self.beta
        return by + s * (1.0 - by)


@register
class ThresholdLayer(_CaffeNeuron):
    """``Threshold``: y = 1 where x > ``threshold_param.threshold`` (default 0), else 0.
    Caffe defines no backward (NOT_IMPLEMENTED): a requested gradient is an error.

    Shape: bottom (*), top same shape."""

    type = "Threshold"

    def setup(self, bottom_shapes):
        self.threshold = self.param.threshold_param.threshold
        return []

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [(x > self.threshold).to(x.dtype)]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        no_backward(self, propagate_down)
        return [None], []


@register
class PReLULayer(_ElementWise):
    """``PReLU``: y = max(x, 0) + a_c·min(x, 0) with a learned slope a per channel (axis 1), or
    one slope for all (``prelu_param.channel_shared``); ``prelu_param.filler`` defaults to
    constant 0.25. Backward: dx = dy·(1 if x > 0 else a_c); da_c += Σ dy·x over x <= 0.
    In place, the gradients use the input (Caffe keeps a copy).

    Shape: bottom (N, C, *) with 2 to 4 axes, top same shape; param (C,) or () when shared."""

    type = "PReLU"
    explicit_backward = True

    def _channels(self, shape) -> int:
        if len(shape) < 2:
            raise self.fail(f"input of shape {tuple(shape)} needs at least 2 axes (N, C, ...)")
        return legacy_dim(self, shape, 1)

    def setup(self, bottom_shapes):
        pp = self.param.prelu_param
        self.channel_shared = pp.channel_shared
        self.channels = self._channels(bottom_shapes[0])
        if pp.HasField("filler"):
            filler = pp.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        shape = () if self.channel_shared else (self.channels,)
        return [filled(self, filler, shape)]

    def reshape(self, bottom_shapes):
        channels = self._channels(bottom_shapes[0])
        if not self.channel_shared and channels != self.channels:
            raise self.fail(f"input has {channels} channels, the layer was set up with {self.channels} slopes")
        return [tuple(bottom_shapes[0])]

    def _slope(self, slope, x):
        if self.channel_shared:
            return slope
        return slope.reshape((1, self.channels) + (1,) * (x.dim() - 2))

    def forward(self, bottoms, params):
        x = bottoms[0]
        return [torch.clamp(x, min=0) + self._slope(params[0], x) * torch.clamp(x, max=0)]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        x, dy = bottoms[0], top_diffs[0].reshape(bottoms[0].shape)
        negative = x <= 0
        slope_grad = None
        if param_propagate_down[0]:
            contribution = torch.where(negative, dy * x, torch.zeros_like(x))
            if self.channel_shared:
                slope_grad = contribution.sum()
            else:
                slope_grad = contribution.transpose(0, 1).reshape(self.channels, -1).sum(dim=1)
        bottom_grad = None
        if propagate_down[0]:
            bottom_grad = dy * torch.where(negative, self._slope(params[0], x).expand_as(x), torch.ones_like(x))
        return [bottom_grad], [slope_grad]
