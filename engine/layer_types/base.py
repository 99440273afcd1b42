"""The contract every engine layer follows.

A layer is a small object built from its ``LayerParameter``. The net owns the blobs; a layer
sees plain torch tensors:

* ``setup(bottom_shapes)`` reads and checks the parameters and returns the layer's parameter
  tensors (weights, biases, BatchNorm statistics), already filled by their fillers. The net
  wraps them in ``Blob`` objects (``net.params[name]``); a caffemodel may later overwrite them.
* ``reshape(bottom_shapes)`` returns the top shapes (Caffe calls Reshape before every Forward;
  the net calls this at construction and whenever input shapes change).
* ``forward(bottoms, params)`` computes the tops from torch tensors with torch operations.
  When the net needs gradients it calls ``forward`` with autograd recording, and the default
  backward is autograd through exactly that computation. Layers whose gradient differs from
  what autograd would produce (Caffe-specific rules), or that need a faster kernel, set
  ``explicit_backward = True`` and implement ``backward``.

Caffe's gradient bookkeeping (bottom diffs overwritten, param diffs accumulated, implicit
splits summing) is the net's job, not the layer's.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from caffeseg.engine.proto import caffe_pb2

Shape = tuple[int, ...]

_REGISTRY: dict[str, type["Layer"]] = {}


def register(cls: type["Layer"]) -> type["Layer"]:
    """Class decorator: make ``cls`` the implementation of ``cls.type`` (the prototxt type string)."""
    if not cls.type:
        raise ValueError(f"{cls.__name__} has no type string")
    _REGISTRY[cls.type] = cls
    return cls


def layer_class(type_name: str) -> type["Layer"] | None:
    """The class registered for a prototxt type string, or None."""
    return _REGISTRY.get(type_name)


def registered_types() -> list[str]:
    return sorted(_REGISTRY)


class LayerError(ValueError):
    """A layer's parameters or inputs break one of Caffe's rules; the message names the layer."""


class Layer:
    """The base of every engine layer: one Caffe layer type, built from its ``LayerParameter``.

    A subclass sets ``type`` (the prototxt type string), is registered with ``@register``, and
    may narrow the bottom/top counts and flags below (the net checks the counts before
    ``setup``). Its docstring gives the Caffe type, the parameters that matter and the shapes.
    A ``Shape`` is a tuple of ints, e.g. ``(N, C, H, W)``; ``()`` is a scalar. It provides:

    * ``setup(bottom_shapes)``, optional: one ``Shape`` per bottom. Reads and checks the
      parameters (``raise self.fail(...)``) and returns the parameter blobs as float32 CPU
      tensors filled by their fillers, in Caffe's blob order and shapes: a caffemodel's blobs
      must match those shapes and are copied over them. Default: no parameters.
    * ``reshape(bottom_shapes)``, required: one ``Shape`` per top, the automatic loss top that
      the net adds when a loss layer names none included. Called after ``setup``, again before
      a forward whose bottom shapes differ from the last ones, and by ``Net.reshape`` (except
      for Input layers); it checks the shapes and raises ``self.fail`` on one it cannot take.
    * ``forward(bottoms, params)``, required: the bottoms as float32 tensors on the net's
      device, with the shapes last given to ``reshape``; the params in ``setup``'s order and
      shapes. Returns one new tensor per top with the shapes ``reshape`` gave (a data layer's
      batch may decide its own: the top blobs take the shapes forward returns), and does not
      write into its bottoms, which other layers may share. When the net needs this layer's
      gradient, forward runs with autograd recording and its torch operations are the backward.
    * ``backward(bottoms, params, tops, top_diffs, propagate_down, param_propagate_down)``, only
      with ``explicit_backward = True``: the forward's bottoms, params and tops, one diff per top
      (the top's shape), and per bottom / per param whether a gradient is wanted. Returns
      ``(bottom_diffs, param_diffs)``: per bottom a tensor with that bottom's element count
      (None: zeros), per param a tensor of its shape (None: nothing to add). The net replaces
      the bottom diffs and adds the param diffs to the param blobs' diffs (Caffe accumulates
      them, e.g. over ``iter_size``).
    * ``adds_param_diffs = True`` (Convolution): the layer's CPU kernels sum a weight gradient
      into the param blob's diff themselves, inside the GEMM as Caffe does
      (``fast_conv.param_diffs``, which the net opens around the layer's backward), and hand
      autograd None for it; the net then adds nothing for those params.
    """

    #: prototxt ``type`` string this class implements
    type: ClassVar[str] = ""
    #: allowed numbers of bottoms/tops (None = any)
    exact_bottoms: ClassVar[int | None] = None
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    exact_tops: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    #: True for Caffe's LossLayer subclasses: top[0] weighs 1 unless loss_weight says otherwise
    is_loss: ClassVar[bool] = False
    #: True when the layer implements ``backward`` itself instead of relying on autograd
    explicit_backward: ClassVar[bool] = False
    #: False for layers that may not run in place (Flatten, Reshape, Split)
    allows_in_place: ClassVar[bool] = True
    #: True when ``stage``/``forward_staged`` exist, so a solver step may run the layer after
    #: backward is queued if nothing depends on it (Net's deferred metric layers)
    deferrable: ClassVar[bool] = False

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int):
        self.param = param
        self.name = param.name
        self.phase = phase  # caffe_pb2.TRAIN or caffe_pb2.TEST

    def fail(self, message: str) -> LayerError:
        """An error that names this layer, for ``raise self.fail(...)``."""
        return LayerError(f"layer '{self.name}' ({self.type}): {message}")

    # -- construction -------------------------------------------------------------------
    def setup(self, bottom_shapes: Sequence[Shape]) -> list[torch.Tensor]:
        """Check parameters; return freshly filled parameter tensors (float32, CPU)."""
        return []

    def reshape(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Top shapes for the given bottom shapes."""
        raise NotImplementedError

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether a gradient may flow to this bottom (loss layers refuse their label input)."""
        return True

    # -- computation --------------------------------------------------------------------
    def forward(self, bottoms: list[torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def backward(
        self,
        bottoms: list[torch.Tensor],
        params: list[torch.Tensor],
        tops: list[torch.Tensor],
        top_diffs: list[torch.Tensor],
        propagate_down: list[bool],
        param_propagate_down: list[bool],
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Only for ``explicit_backward`` layers: (bottom diffs, param diffs to accumulate)."""
        raise NotImplementedError
