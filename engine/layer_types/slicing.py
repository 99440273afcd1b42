"""Layers that cut a blob into pieces or repeat it along one axis: Slice, Tile.

Both are pure copies, so autograd's gradient (pieces' diffs written back in place for Slice,
the tiles' diffs summed for Tile) is exactly Caffe's backward.
"""
from __future__ import annotations

import torch

from caffeseg.engine.layer_types._util import canonical_axis
from caffeseg.engine.layer_types.base import Layer, register


@register
class SliceLayer(Layer):
    """Caffe ``Slice``: cut the bottom along one axis into consecutive pieces, one per top.

    Parameters (``slice_param``): ``axis`` (default 1, negative counts from the end) or the
    legacy ``slice_dim`` (non-negative; not both); ``slice_point``: the strictly increasing
    positions where a piece ends (one fewer than the tops), or none to cut into equal pieces
    (the axis must divide evenly by the number of tops).

    Shape:
        - bottom: ``(d0, ..., d_axis, ...)``
        - top i: the bottom's shape with ``d_axis`` replaced by piece i's length
    """

    type = "Slice"
    exact_bottoms = 1
    min_tops = 1

    def setup(self, bottom_shapes):
        sp = self.param.slice_param
        if sp.HasField("axis") and sp.HasField("slice_dim"):
            raise self.fail("give either slice_param.axis or the legacy slice_dim, not both")
        self.points = [int(p) for p in sp.slice_point]
        return []

    def _axis(self, shape) -> int:
        sp = self.param.slice_param
        if sp.HasField("slice_dim"):
            if sp.slice_dim >= len(shape):
                raise self.fail(f"slice_dim {sp.slice_dim} out of range for a {len(shape)}-axis bottom")
            return int(sp.slice_dim)
        return canonical_axis(self, sp.axis, len(shape))

    def _lengths(self, shape) -> tuple[int, list[int]]:
        axis = self._axis(shape)
        size = shape[axis]
        ntops = len(self.param.top)
        if self.points:
            if len(self.points) != ntops - 1:
                raise self.fail(f"{len(self.points)} slice_point value(s) for {ntops} tops "
                                "(give one fewer than the tops, or none for equal pieces)")
            if ntops > size:
                raise self.fail(f"{ntops} tops cannot slice axis {axis} of size {size} (bottom {tuple(shape)})")
            lengths, prev = [], 0
            for point in self.points:
                if point <= prev:
                    raise self.fail(f"slice_point values must increase from 1: {self.points}")
                lengths.append(point - prev)
                prev = point
            if prev > size:
                raise self.fail(f"slice_point {prev} is beyond axis {axis} of size {size} (bottom {tuple(shape)})")
            lengths.append(size - prev)
        else:
            if size % ntops:
                raise self.fail(f"{ntops} tops do not divide axis {axis} of size {size} evenly "
                                f"(bottom {tuple(shape)}); give slice_point values")
            lengths = [size // ntops] * ntops
        return axis, lengths

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, lengths = self._lengths(shape)
        return [shape[:axis] + (n,) + shape[axis + 1:] for n in lengths]

    def forward(self, bottoms, params):
        x = bottoms[0]
        if len(self.param.top) == 1:
            return [x]  # Caffe's single top shares the bottom's data
        axis, lengths = self._lengths(tuple(x.shape))
        # copies, as Caffe's tops are: a view would let a write into one top change the bottom
        return [piece.clone(memory_format=torch.contiguous_format) for piece in x.split(lengths, dim=axis)]


@register
class TileLayer(Layer):
    """Caffe ``Tile``: repeat the block of axes from ``axis`` on, ``tiles`` times.

    ``top = cat([bottom] * tiles, axis)``; the backward sums the tiles' diffs.

    Parameters (``tile_param``): ``axis`` (default 1), ``tiles`` (required, > 0).

    Shape:
        - bottom: ``(d0, ..., d_axis, ...)``
        - top: ``(d0, ..., d_axis * tiles, ...)``
    """

    type = "Tile"
    exact_bottoms = 1
    exact_tops = 1

    def setup(self, bottom_shapes):
        tp = self.param.tile_param
        if not tp.HasField("tiles"):
            raise self.fail("tile_param.tiles (the number of copies) must be given")
        if tp.tiles <= 0:
            raise self.fail(f"tile_param.tiles must be positive, got {tp.tiles}")
        self.tiles = int(tp.tiles)
        return []

    def reshape(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis = canonical_axis(self, self.param.tile_param.axis, len(shape))
        return [shape[:axis] + (shape[axis] * self.tiles,) + shape[axis + 1:]]

    def forward(self, bottoms, params):
        x = bottoms[0]
        axis = canonical_axis(self, self.param.tile_param.axis, x.dim())
        repeats = [1] * x.dim()
        repeats[axis] = self.tiles
        return [x.repeat(*repeats)]
