"""Layers without bottoms that produce blobs from their parameters: Parameter (a learnable
blob exposed as a top) and DummyData (tops filled by fillers)."""
from __future__ import annotations

import torch

from caffeseg.engine import device as device_state
from caffeseg.engine import fillers
from caffeseg.engine.layer_types._util import filled
from caffeseg.engine.layer_types.base import Layer, register
from caffeseg.engine.proto import caffe_pb2


@register
class ParameterLayer(Layer):
    """Caffe ``Parameter``: a learnable blob as the layer's top.

    The top is the parameter itself (same data; its diff goes to the parameter's diff), so a
    net can feed a learned tensor into any layer. The blob starts at zero, as Caffe's does.

    Parameters (``parameter_param``): ``shape``. Blobs: one, of that shape.

    Shape:
        - no bottoms
        - top: ``parameter_param.shape``
    """

    type = "Parameter"
    exact_bottoms = 0
    exact_tops = 1
    explicit_backward = True  # the gradient is the top diff itself

    def _shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.param.parameter_param.shape.dim)

    def setup(self, bottom_shapes):
        if any(d < 0 for d in self._shape()):
            raise self.fail(f"parameter_param.shape {self._shape()} has a negative dimension")
        return [torch.zeros(self._shape(), dtype=torch.float32)]

    def reshape(self, bottom_shapes):
        return [self._shape()]

    def forward(self, bottoms, params):
        return [params[0]]

    def backward(self, bottoms, params, tops, top_diffs, propagate_down, param_propagate_down):
        return [], [top_diffs[0] if param_propagate_down[0] else None]


@register
class DummyDataLayer(Layer):
    """Caffe ``DummyData``: tops of fixed shapes filled by fillers.

    A top with a ``constant`` filler is filled once, when the net is built; a top with any other
    filler is filled again on every forward pass (Caffe's rule). No gradient.

    Parameters (``dummy_data_param``): ``data_filler`` (none: constant 0; one: for every top; or
    one per top); ``shape`` (once, or once per top) or the legacy ``num``, ``channels``,
    ``height``, ``width`` (each once or once per top; not with ``shape``).

    Shape:
        - no bottoms
        - top i: ``shape[i]`` or ``(num[i], channels[i], height[i], width[i])``
    """

    type = "DummyData"
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom_shapes):
        dp = self.param.dummy_data_param
        ntops = len(self.param.top)
        nfillers = len(dp.data_filler)
        if nfillers not in (0, 1, ntops):
            raise self.fail(f"{nfillers} data_filler entries for {ntops} tops (give 0, 1 or one per top)")
        legacy = {name: [int(v) for v in getattr(dp, name)] for name in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(dp.shape):
                raise self.fail("give either shape or the legacy num/channels/height/width, not both")
            for name, values in legacy.items():
                if len(values) not in (1, ntops):
                    raise self.fail(f"give '{name}' once, or once per top ({ntops}); {len(values)} given")
            pick = {name: values * ntops if len(values) == 1 else values for name, values in legacy.items()}
            self.shapes = [tuple(pick[n][i] for n in ("num", "channels", "height", "width")) for i in range(ntops)]
        else:
            if len(dp.shape) not in (1, ntops):
                raise self.fail(f"give 'shape' once, or once per top ({ntops}); {len(dp.shape)} given")
            shapes = [tuple(int(d) for d in s.dim) for s in dp.shape]
            self.shapes = shapes * ntops if len(shapes) == 1 else shapes
        for shape in self.shapes:
            if any(d < 0 for d in shape):
                raise self.fail(f"top shape {shape} has a negative dimension")
        if nfillers == 0:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)] * ntops
        elif nfillers == 1:
            self.fillers = [dp.data_filler[0]] * ntops
        else:
            self.fillers = list(dp.data_filler)
        where = device_state.current_device()  # the net being built lives there
        # constant tops never change, so they are made once; the others are refilled per forward
        self.constant_tops = {
            i: filled(self, filler, shape).to(where)
            for i, (filler, shape) in enumerate(zip(self.fillers, self.shapes)) if filler.type == "constant"}
        for filler, shape in zip(self.fillers, self.shapes):
            if filler.type != "constant":
                # a filler Caffe refuses fails while the net is built; a private generator
                # keeps the engine's random stream as Caffe's would be (nothing drawn at setup)
                try:
                    fillers.fill(filler, shape, generator=torch.Generator())
                except fillers.FillerError as err:
                    raise self.fail(str(err)) from None
        return []

    def reshape(self, bottom_shapes):
        return list(self.shapes)

    def forward(self, bottoms, params):
        return [self.constant_tops[i] if i in self.constant_tops else filled(self, filler, shape)
                for i, (filler, shape) in enumerate(zip(self.fillers, self.shapes))]
