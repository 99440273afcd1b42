"""Input layer: no bottoms; its tops are the net's inputs."""
from __future__ import annotations

from caffeseg.engine.layer_types.base import Layer, register


@register
class InputLayer(Layer):
    """Caffe ``Input``: declares the net's input blobs; the caller fills them (``net.blobs[name]``).

    Parameters (``input_param``): ``shape`` (none, once for every top, or once per top).

    Shape:
        - no bottoms
        - top i: ``input_param.shape[i]``"""

    type = "Input"
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom_shapes):
        shapes = self.param.input_param.shape
        ntops = len(self.param.top)
        if len(shapes) not in (0, 1, ntops):
            raise self.fail(f"input_param has {len(shapes)} shapes for {ntops} tops "
                            "(give 0, 1 or one per top)")
        return []

    def reshape(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        ntops = len(self.param.top)
        if not shapes:
            return [(0,)] * ntops
        if len(shapes) == 1:
            return shapes * ntops
        return shapes

    def forward(self, bottoms, params):
        return []  # the net owns the input blobs; nothing to compute
