"""Layers that move data without arithmetic (or with simple element-wise merges):
Crop, Flatten, Reshape, Concat, Split, Silence, Eltwise."""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import canonical_axis, count
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2


@register
class CropLayer(Layer):
    """Caffe ``Crop``: cut bottom 0 to bottom 1's size on the axes from ``axis`` on.

    Parameters (``crop_param``): ``axis`` (default 2), ``offset`` (none: 0; one for every cropped
    axis; or one per cropped axis). Only bottom 0 takes a gradient.

    Shape:
        - bottom 0: ``(d0, ..., d_{n−1})``; bottom 1 (reference): the same number of axes
        - top: bottom 0's sizes before ``axis``, bottom 1's from ``axis`` on"""

    type = "Crop"
    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes):
        cp = self.param.crop_param
        ndim = len(bottom_shapes[0])
        self.axis = canonical_axis(self, cp.axis, ndim)
        offsets = list(cp.offset)
        ncrop = ndim - self.axis
        if len(offsets) > 1 and len(offsets) != ncrop:
            raise self.fail(f"{len(offsets)} offsets given for {ncrop} cropped axes "
                            f"(give none, one, or one per axis from {self.axis})")
        return []

    def _offsets(self, ndim):
        offsets = list(self.param.crop_param.offset)
        if not offsets:
            offsets = [0]
        if len(offsets) == 1:
            offsets = offsets * (ndim - self.axis)
        return [0] * self.axis + offsets

    def reshape(self, bottom_shapes):
        a, b = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(a) != len(b):
            raise self.fail(f"bottoms must have the same number of axes: {a} vs {b}")
        offsets = self._offsets(len(a))
        top = list(a)
        for i in range(self.axis, len(a)):
            if a[i] - offsets[i] < b[i]:
                raise self.fail(f"axis {i}: cannot crop {b[i]} at offset {offsets[i]} from size {a[i]}")
            top[i] = b[i]
        return [tuple(top)]

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0  # bottom[1] only lends its shape

    def forward(self, bottoms, params):
        x, ref = bottoms
        offsets = self._offsets(x.dim())
        index = tuple(slice(offsets[i], offsets[i] + (ref.shape[i] if i >= self.axis else x.shape[i]))
                      for i in range(x.dim()))
        return [x[index]]


@register
class FlattenLayer(Layer):
    """Caffe ``Flatten``: merge the axes ``axis..end_axis`` into one.

    Parameters (``flatten_param``): ``axis`` (default 1), ``end_axis`` (default −1). Not in place.

    Shape: bottom ``(*a, *merged, *b)``, top ``(*a, prod(merged), *b)``."""

    type = "Flatten"
    exact_bottoms = 1
    exact_tops = 1
    allows_in_place = False

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        fp = self.param.flatten_param
        start = canonical_axis(self, fp.axis, len(shape))
        end = canonical_axis(self, fp.end_axis, len(shape))
        return [shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]]

    def forward(self, bottoms, params):
        return [bottoms[0].reshape(self.reshape([bottoms[0].shape])[0])]


@register
class ReshapeLayer(Layer):
    """Caffe ``Reshape``: a new shape for the same values.

    Parameters (``reshape_param``): ``shape`` (dim 0 copies the bottom's dim, −1 is inferred,
    at most once), ``axis`` (default 0) and ``num_axes`` (default −1: to the end) choose the run
    of bottom axes the shape replaces. Not in place.

    Shape: bottom ``(*)``, top the new shape with the same count."""

    type = "Reshape"
    exact_bottoms = 1
    exact_tops = 1
    allows_in_place = False

    def setup(self, bottom_shapes):
        dims = list(self.param.reshape_param.shape.dim)
        if dims.count(-1) > 1:
            raise self.fail("at most one -1 dimension may be inferred")
        if any(d < -1 for d in dims):
            raise self.fail(f"invalid dims {dims}")
        return []

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        rp = self.param.reshape_param
        dims = list(rp.shape.dim)
        n = len(shape)
        start = rp.axis if rp.axis >= 0 else n + rp.axis + 1
        if not 0 <= start <= n:
            raise self.fail(f"axis {rp.axis} out of range for {shape}")
        end = n if rp.num_axes == -1 else start + rp.num_axes
        if rp.num_axes < -1 or end > n:
            raise self.fail(f"num_axes {rp.num_axes} out of range for {shape} from axis {start}")
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= n:
                    raise self.fail(f"dim {i} is 0 (copy) but the bottom has no axis {start + i}")
                new.append(shape[start + i])
            else:
                new.append(d)
        top = list(shape[:start]) + new + list(shape[end:])
        total = count(shape)
        if -1 in top:
            known = count([d for d in top if d != -1])
            if known == 0 or total % known:
                raise self.fail(f"cannot infer the -1 dim: {total} values into {top}")
            top[top.index(-1)] = total // known
        if count(top) != total:
            raise self.fail(f"shape {top} has {count(top)} values, the bottom {shape} has {total}")
        return [tuple(top)]

    def forward(self, bottoms, params):
        return [bottoms[0].reshape(self.reshape([bottoms[0].shape])[0])]


@register
class ConcatLayer(Layer):
    """Caffe ``Concat``: join the bottoms along one axis; the backward slices the diff back.

    Parameters (``concat_param``): ``axis`` (default 1, negative counts from the end) or the
    legacy ``concat_dim`` (not both).

    Shape:
        - bottoms: equal shapes except on ``axis``
        - top: the common shape with the ``axis`` sizes summed"""

    type = "Concat"
    min_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        cp = self.param.concat_param
        if cp.HasField("axis") and cp.HasField("concat_dim"):
            raise self.fail("give either axis or the legacy concat_dim, not both")
        return []

    def _axis(self, ndim):
        cp = self.param.concat_param
        if cp.HasField("concat_dim"):
            return cp.concat_dim
        return canonical_axis(self, cp.axis, ndim)

    def reshape(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        axis = self._axis(len(first))
        total = 0
        for s in bottom_shapes:
            s = tuple(s)
            if len(s) != len(first) or s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise self.fail(f"bottoms {first} and {s} differ outside concat axis {axis}")
            total += s[axis]
        return [first[:axis] + (total,) + first[axis + 1:]]

    def forward(self, bottoms, params):
        if len(bottoms) == 1:
            return [bottoms[0]]
        return [torch.cat(bottoms, dim=self._axis(bottoms[0].dim()))]


@register
class SplitLayer(Layer):
    """Caffe ``Split``: the same blob under several names; the backward sums the tops' diffs.

    Inserted by the net wherever a blob feeds more than one layer. No parameters. Not in place.

    Shape: bottom ``(*)``, every top the same shape."""

    type = "Split"
    exact_bottoms = 1
    min_tops = 1
    allows_in_place = False

    def reshape(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(self.param.top)

    def forward(self, bottoms, params):
        x = bottoms[0]
        # distinct views of one tensor; autograd sums the tops' gradients, as Split's backward does
        return [x.view(x.shape) for _ in self.param.top]


@register
class SilenceLayer(Layer):
    """Caffe ``Silence``: consumes its bottoms so they are not net outputs; no tops.

    No parameters. Shape: bottoms any; no tops."""

    type = "Silence"
    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom_shapes):
        return []

    def forward(self, bottoms, params):
        return []


_E = caffe_pb2.EltwiseParameter


class _StableFreeProduct(torch.autograd.Function):
    """PROD with ``stable_prod_grad: false``: Caffe's dx_i = dy·y/x_i."""

    @staticmethod
    def forward(ctx, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        ctx.save_for_backward(y, *xs)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, *xs = ctx.saved_tensors
        return tuple(dy * y / x for x in xs)


@register
class EltwiseLayer(Layer):
    """Caffe ``Eltwise``: element-wise SUM (with ``coeff``), PROD or MAX of the bottoms.

    MAX ties between bottoms 0 and 1 go to bottom 1, later bottoms win only when strictly larger
    (Caffe's CPU rule), and the gradient goes to the winner. PROD with ``stable_prod_grad: false``
    uses Caffe's ``dy·y/x_i``.

    Parameters (``eltwise_param``): ``operation`` (default SUM), ``coeff`` (SUM only, one per
    bottom), ``stable_prod_grad`` (default true).

    Shape: bottoms ``(*)`` all the same shape, top that shape."""

    type = "Eltwise"
    min_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes):
        ep = self.param.eltwise_param
        self.op = ep.operation
        self.coeff = list(ep.coeff)
        if self.coeff and len(self.coeff) != len(bottom_shapes):
            raise self.fail(f"{len(self.coeff)} coeffs for {len(bottom_shapes)} bottoms (give one per bottom)")
        if self.coeff and self.op == _E.PROD:
            raise self.fail("coeff is only allowed with operation SUM")
        return []

    def reshape(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for s in bottom_shapes[1:]:
            if tuple(s) != first:
                raise self.fail(f"all bottoms must have the same shape; got {first} and {tuple(s)}")
        return [first]

    def forward(self, bottoms, params):
        if self.op == _E.SUM:
            coeff = self.coeff or [1.0] * len(bottoms)
            y = bottoms[0] * coeff[0] if coeff[0] != 1 else bottoms[0]
            for x, c in zip(bottoms[1:], coeff[1:]):
                y = y + (x * c if c != 1 else x)
            return [y]
        if self.op == _E.PROD:
            if not self.param.eltwise_param.stable_prod_grad:
                return [_StableFreeProduct.apply(*bottoms)]
            y = bottoms[0]
            for x in bottoms[1:]:
                y = y * x
            return [y]
        # MAX: a tie between bottoms 0 and 1 goes to bottom 1; later bottoms win only on '>'
        # (Caffe's CPU rule). torch.where routes each gradient to the chosen bottom.
        a, b = bottoms[0], bottoms[1]
        y = torch.where(a > b, a, b)
        for x in bottoms[2:]:
            y = torch.where(x > y, x, y)
        return [y]
