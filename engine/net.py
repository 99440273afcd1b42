"""pycaffe's ``caffe.Net`` over the engine's torch layers (Caffe's ``Net::Init``, ``Net::CopyTrainedLayersFrom``).

Construction follows ``Net::Init``: filter layers by NetState, insert implicit Splits, build
layers in file order (in-place tops reuse their bottom's blob), register and share params,
then decide which layers need backward. The result is a fixed execution plan (one
``NetLayer`` per layer) that ``forward``/``backward`` walk without rebuilding anything.

Gradients: ``forward`` records autograd only for layers that need backward, each from its own
detached input leaves, so ``backward`` can run layer by layer in reverse like Caffe — bottom
diffs overwritten, param diffs accumulated, Split tops summed — and honour start/end ranges.
"""
from __future__ import annotations

import collections
import os
from typing import Sequence

import numpy as np
import torch

from caffeseg.engine import layer_types  # noqa: F401  (fills the layer registry)
from caffeseg.engine import device as device_state
from caffeseg.engine.blob import Blob
from caffeseg.engine.layer_types import fast_conv
from caffeseg.engine.layer_types.base import LayerError, layer_class, registered_types
from caffeseg.engine.layer_types.python import is_annotated_user_error
from caffeseg.engine.netfilter import filter_net
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.splits import insert_splits

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
AUTOMATIC_TOP = "(automatic)"


def _shaped(tensor: torch.Tensor, shape) -> torch.Tensor:
    """``tensor`` viewed as ``shape``; the reshape call is skipped when it already has it (a
    per-layer cost in every backward pass)."""
    return tensor if tensor.shape == shape else tensor.reshape(shape)


_run_backward = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)


def _vector_jacobian(outputs, inputs, output_grads):
    """``torch.autograd.grad(outputs, inputs, output_grads, allow_unused=True, retain_graph=True)``.

    The net hands autograd well-formed arguments (float32 gradients shaped as their outputs),
    so the per-call checks of ``torch.autograd.grad`` (a third of a small layer's backward
    time) are skipped by calling its engine directly when this torch has it."""
    if _run_backward is None:
        return torch.autograd.grad(outputs, inputs, output_grads, allow_unused=True, retain_graph=True)
    return _run_backward.run_backward(tuple(outputs), tuple(output_grads), True, False, tuple(inputs), True,
                                      accumulate_grad=False)


class NetError(ValueError):
    """The net definition breaks a construction rule; the message names the layer or blob."""


class NetFileError(NetError, RuntimeError):
    """A network or weights file cannot be opened. A RuntimeError too: pycaffe's ``Net(...)``
    raises RuntimeError("Could not open file ...") there (its CheckFile)."""


class WeightsMismatchError(NetError):
    """A weights file's blob does not fit the net's parameter (``copy_from``)."""


class NetLayer:
    """One built layer: what pycaffe shows (``.type``, ``.blobs``) plus the net's bookkeeping."""

    def __init__(self, param: caffe_pb2.LayerParameter, impl):
        self.param = param
        self.name = param.name
        self.type = param.type
        self.impl = impl
        self.blobs: list[Blob] = []
        self.bottoms: list[Blob] = []
        self.tops: list[Blob] = []
        self.bottom_names: list[str] = list(param.bottom)
        self.top_names: list[str] = []
        self.loss_weights: list[float] = []
        self.need_backward = False
        self.bottom_need_backward: list[bool] = []
        self.param_propagate_down: list[bool] = []
        #: indices of params that share another layer's blob (ParamSpec.name seen before)
        self.shared_param_ids: set[int] = set()
        self.bottom_shapes: tuple | None = None
        # autograd record of the last forward: (bottom leaves, param leaves, top tensors)
        self.saved = None

    def setup(self, bottom, top) -> None:
        """pycaffe's ``layer.setup(bottom, top)`` (Caffe's ``LayerSetUp``) on lists of blobs:
        a Python layer runs its own ``setup`` on them; another layer re-reads its parameters
        for the bottoms' shapes and keeps its current weights (as Caffe's layers skip filling
        blobs they already have)."""
        if self.type == "Python":
            self.impl.user.setup(list(bottom), list(top))
        else:
            self.impl.setup([tuple(b.shape) for b in bottom])

    def reshape(self, bottom, top) -> None:
        """pycaffe's ``layer.reshape(bottom, top)``: shape the ``top`` blobs for ``bottom``."""
        if self.type == "Python":
            self.impl.user.reshape(list(bottom), list(top))
            return
        shapes = self.impl.reshape([tuple(b.shape) for b in bottom])
        for blob, shape in zip(top, shapes):
            blob.reshape(*shape)
        if list(bottom) == self.bottoms:
            self.bottom_shapes = tuple(tuple(b.shape) for b in bottom)

    @property
    def is_source(self) -> bool:
        """Layers whose tops the net fills from outside (Input)."""
        return self.type == "Input"

    def __repr__(self):
        return f"<layer '{self.name}' ({self.type})>"


def _read_net_param(network) -> tuple[caffe_pb2.NetParameter, str | None]:
    if isinstance(network, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(network)
        return param, None
    if isinstance(network, bytes):
        network = network.decode()
    path = os.fspath(network)
    _check_file(path)
    from caffeseg.engine.prototxt import read_net
    return read_net(path), path


def _check_file(path) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError:
        raise NetFileError(f"Could not open file {path}") from None


class Net:
    """``caffe.Net(prototxt, phase)``, ``Net(prototxt, weights, phase)`` or keywords
    ``Net(prototxt, phase, weights=..., stages=[...], level=...)``."""

    def __init__(self, network_file, *args, phase=None, weights=None, level: int = 0,
                 stages: Sequence[str] | None = None):
        if len(args) == 1:
            phase = args[0] if phase is None else phase
        elif len(args) == 2:
            weights, phase = args
        elif len(args) > 2:
            raise TypeError("Net(prototxt, phase) or Net(prototxt, weights, phase)")
        if phase is None:
            raise TypeError("Net() needs a phase: caffe.TRAIN or caffe.TEST")
        if int(phase) not in (TRAIN, TEST):
            raise ValueError(f"phase must be caffe.TRAIN (0) or caffe.TEST (1), got {phase!r}")
        param, self.source = _read_net_param(network_file)
        param.state.phase = int(phase)
        param.state.level = int(level)
        for stage in stages or []:
            param.state.stage.append(stage)
        self.phase = int(phase)
        self.device = device_state.current_device()
        if weights is not None:
            _check_file(os.fspath(weights))
        self._build(param)
        if weights is not None:
            self.copy_from(weights)

    @classmethod
    def from_param(cls, param: caffe_pb2.NetParameter, phase, stages=None, level=0, weights=None):
        """Build from a NetParameter already in memory (the solver's path)."""
        return cls(param, phase, weights=weights, stages=stages, level=level)

    # ------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------
    def _build(self, param: caffe_pb2.NetParameter) -> None:
        # pycaffe's before_/after_forward and _backward callbacks, each called with a layer index
        self._before_forward: list = []
        self._after_forward: list = []
        self._before_backward: list = []
        self._after_backward: list = []
        try:
            filtered = filter_net(param)
            expanded = insert_splits(filtered)
        except ValueError as err:
            raise NetError(f"{self._where()}: {err}") from None
        self.param = expanded
        self.name = expanded.name
        self.blobs: "collections.OrderedDict[str, Blob]" = collections.OrderedDict()
        self.layers: list[NetLayer] = []
        self.inputs: list[str] = []
        self.learnable_params: list[tuple[Blob, float, float]] = []
        self._owners: dict[str, tuple[Blob, int, caffe_pb2.ParamSpec]] = {}
        self._learnable_explicit: list[list[bool]] = []
        self.blob_loss_weights: "collections.OrderedDict[str, float]" = collections.OrderedDict()
        self._anonymous: list[Blob] = []
        available: dict[str, Blob] = {}
        for lp in expanded.layer:
            self._add_layer(lp, available)
        self.outputs = sorted(available)
        self._decide_backward(expanded)
        self._records_grad = any(layer.need_backward for layer in self.layers)
        self._loss_terms: dict[int, torch.Tensor] = {}  # layer index -> its weighted loss
        self._metric_layers = self._find_metric_layers()
        #: let ``_forward_backward`` run metric layers after backward is queued; only an
        #: accelerator gains from it (on the CPU every layer runs in turn anyway)
        self.defer_metric_layers = self.device.type != "cpu"

    def _find_metric_layers(self) -> set[int]:
        """Indices of layers whose forward nothing else waits for: a deferrable type, no
        backward, no loss weight, and tops that no other layer reads or writes."""
        users: dict[int, int] = collections.Counter()
        for layer in self.layers:
            for blob in set(map(id, layer.bottoms)) | set(map(id, layer.tops)):
                users[blob] += 1
        return {index for index, layer in enumerate(self.layers)
                if layer.impl.deferrable and not layer.need_backward
                and not any(layer.loss_weights)
                and all(users[id(top)] == 1 for top in layer.tops)}

    def _where(self) -> str:
        return self.source or "net"

    def _make_layer(self, lp: caffe_pb2.LayerParameter):
        cls = layer_class(lp.type)
        if cls is None:
            raise NetError(f"{self._where()}: layer '{lp.name}' has unsupported type '{lp.type}' "
                           f"(the engine implements: {', '.join(registered_types())})")
        phase = lp.phase if lp.HasField("phase") else self.phase
        impl = cls(lp, phase)
        if lp.type == "Python" and self.source:
            # Caffe finds the module on PYTHONPATH; DIGITS also looks beside the prototxt
            impl.search_dirs = [os.path.dirname(os.path.abspath(self.source))] + list(cls.search_dirs)
        return impl

    def _check_counts(self, lp, cls, what: str, n: int) -> None:
        exact, low, high = (getattr(cls, f"exact_{what}"), getattr(cls, f"min_{what}"),
                            getattr(cls, f"max_{what}"))
        problem = None
        if exact is not None and n != exact:
            problem = f"exactly {exact}"
        elif low is not None and n < low:
            problem = f"at least {low}"
        elif high is not None and n > high:
            problem = f"at most {high}"
        if problem:
            raise NetError(f"{self._where()}: layer '{lp.name}' ({lp.type}) takes {problem} "
                           f"{what[:-1]} blob(s), the prototxt gives {n}")

    def _add_layer(self, lp: caffe_pb2.LayerParameter, available: dict[str, Blob]) -> None:
        impl = self._make_layer(lp)
        layer = NetLayer(lp, impl)
        cls = type(impl)
        self._check_counts(lp, cls, "bottoms", len(lp.bottom))
        for j, name in enumerate(lp.bottom):
            if name not in self.blobs:
                raise NetError(f"{self._where()}: layer '{lp.name}': unknown bottom blob '{name}'")
            layer.bottoms.append(self.blobs[name])
            available.pop(name, None)
        # Caffe's LossLayer creates its one top when none is declared
        top_names = list(lp.top)
        auto_tops = 0
        if cls.is_loss and not top_names:
            auto_tops = 1
        self._check_counts(lp, cls, "tops", len(top_names) + auto_tops)
        bottom_shapes = [blob.shape for blob in layer.bottoms]
        try:
            fresh_params = impl.setup(bottom_shapes)
            top_shapes = impl.reshape(bottom_shapes)
        except LayerError:
            raise
        except (ValueError, RuntimeError, IndexError) as err:
            if is_annotated_user_error(err):
                raise  # a Python layer's own exception reaches the caller as itself (Caffe)
            raise NetError(f"{self._where()}: layer '{lp.name}' ({lp.type}) could not be set up "
                           f"for bottom shapes {bottom_shapes}: {err}") from err
        layer.bottom_shapes = tuple(bottom_shapes)
        top_shapes = list(top_shapes)
        for j, name in enumerate(top_names):
            shape = tuple(top_shapes[j]) if j < len(top_shapes) else ()
            in_place = j < len(lp.bottom) and lp.bottom[j] == name
            if in_place:
                if not cls.allows_in_place:
                    raise NetError(f"{self._where()}: layer '{lp.name}' ({lp.type}) cannot run in place "
                                   f"(top '{name}' is also its bottom)")
                blob = self.blobs[name]
            elif name in self.blobs:
                raise NetError(f"{self._where()}: top blob '{name}' of layer '{lp.name}' is produced by "
                               "multiple sources (only a layer computing in place may reuse a blob name)")
            else:
                blob = Blob(shape, self.device)
                self.blobs[name] = blob
            if in_place and blob.shape != shape:
                blob.reshape(*shape)
            layer.tops.append(blob)
            layer.top_names.append(name)
            available[name] = blob
            if lp.type == "Input":
                self.inputs.append(name)
        for j in range(auto_tops):
            shape = tuple(top_shapes[len(top_names) + j]) if len(top_shapes) > len(top_names) + j else ()
            blob = Blob(shape, self.device)
            self._anonymous.append(blob)
            layer.tops.append(blob)
            layer.top_names.append(AUTOMATIC_TOP)
        self._set_loss_weights(layer, cls)
        self._register_params(layer, cls, fresh_params)
        self.layers.append(layer)

    def _set_loss_weights(self, layer: NetLayer, cls) -> None:
        lp = layer.param
        ntops = len(layer.tops)
        if len(lp.loss_weight):
            if len(lp.loss_weight) != ntops:
                raise NetError(f"{self._where()}: layer '{lp.name}' lists {len(lp.loss_weight)} loss_weight "
                               f"value(s) for {ntops} top(s); give one per top")
            weights = [float(w) for w in lp.loss_weight]
        else:
            weights = [1.0 if (cls.is_loss and j == 0) else 0.0 for j in range(ntops)]
        layer.loss_weights = weights
        for blob, name, w in zip(layer.tops, layer.top_names, weights):
            if name != AUTOMATIC_TOP:
                self.blob_loss_weights[name] = w
            if w:
                blob.grad_tensor.fill_(w)
        for name in self.blobs:
            self.blob_loss_weights.setdefault(name, 0.0)

    def _register_params(self, layer: NetLayer, cls, fresh: list[torch.Tensor]) -> None:
        lp = layer.param
        if len(lp.param) > len(fresh):
            raise NetError(f"{self._where()}: layer '{lp.name}' ({lp.type}) has {len(fresh)} parameter "
                           f"blob(s) but the prototxt gives {len(lp.param)} 'param' entries")
        fixed = getattr(cls, "fixed_params", False) or getattr(layer.impl, "fixed_params", False)
        for i, tensor in enumerate(fresh):
            spec = lp.param[i] if i < len(lp.param) else caffe_pb2.ParamSpec()
            lr_mult = 0.0 if fixed else float(spec.lr_mult)
            layer.param_propagate_down.append(lr_mult != 0)
            name = spec.name
            if name and name in self._owners:
                layer.blobs.append(self._share_param(layer, i, tensor, spec))
                layer.shared_param_ids.add(i)
                continue
            blob = Blob(data=tensor.to(self.device, torch.float32).contiguous(), device=self.device)
            layer.blobs.append(blob)
            index = len(self.learnable_params)
            self.learnable_params.append((blob, lr_mult, float(spec.decay_mult)))
            self._learnable_explicit.append([spec.HasField("lr_mult"), spec.HasField("decay_mult")])
            if name:
                self._owners[name] = (blob, index, spec)

    def _share_param(self, layer: NetLayer, i: int, tensor: torch.Tensor, spec) -> Blob:
        owner, index, _ = self._owners[spec.name]
        mode = spec.share_mode
        shape = tuple(tensor.shape)
        if mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if owner.count != int(np.prod(shape, dtype=np.int64)):
                raise NetError(f"{self._where()}: layer '{layer.name}' shares param '{spec.name}' "
                               f"with count {int(np.prod(shape))}, the owner's count is {owner.count}")
        elif owner.shape != shape:
            raise NetError(f"{self._where()}: layer '{layer.name}' param {i} shares '{spec.name}' with shape "
                           f"{shape}, but the owner has shape {owner.shape} (share_mode STRICT)")
        blob, lr, decay = self.learnable_params[index]
        explicit = self._learnable_explicit[index]
        if spec.HasField("lr_mult"):
            if explicit[0] and spec.lr_mult != lr:
                raise NetError(f"{self._where()}: shared param '{spec.name}' has mismatched lr_mult "
                               f"({spec.lr_mult} in layer '{layer.name}', {lr} at its owner)")
            explicit[0], lr = True, float(spec.lr_mult)
        if spec.HasField("decay_mult"):
            if explicit[1] and spec.decay_mult != decay:
                raise NetError(f"{self._where()}: shared param '{spec.name}' has mismatched decay_mult "
                               f"({spec.decay_mult} in layer '{layer.name}', {decay} at its owner)")
            explicit[1], decay = True, float(spec.decay_mult)
        self.learnable_params[index] = (blob, lr, decay)
        if shape != owner.shape:
            return owner.view_as_shape(shape)  # PERMISSIVE: same values and diffs, another shape
        return owner

    def _decide_backward(self, param: caffe_pb2.NetParameter) -> None:
        """``Net::Init``'s need-backward rules, including force_backward: a layer needs backward if a
        param of it learns (lr_mult ≠ 0) or a bottom needs it (and propagate_down allows), and only
        while some loss lies downstream of it (or ``force_backward``)."""
        blob_need = {id(b): False for b in self.blobs.values()}
        for layer in self.layers:
            need = False
            for j, blob in enumerate(layer.bottoms):
                b_need = blob_need.get(id(blob), False)
                need = need or b_need
                if len(layer.param.propagate_down):
                    if len(layer.param.propagate_down) != len(layer.bottoms):
                        raise NetError(f"{self._where()}: layer '{layer.name}': propagate_down must be "
                                       "empty or have one entry per bottom")
                    b_need = bool(layer.param.propagate_down[j])
                layer.bottom_need_backward.append(b_need)
            need = need or any(layer.param_propagate_down)
            layer.need_backward = need
            if need:
                for blob in layer.tops:
                    blob_need[id(blob)] = True
        under_loss: set[int] = set()
        skip: set[int] = set()
        for layer in reversed(self.layers):
            contributes = any(w != 0 for w in layer.loss_weights) or any(id(t) in under_loss for t in layer.tops)
            skip_down = all(id(t) in skip for t in layer.tops)
            if layer.need_backward and skip_down:
                layer.need_backward = False
                layer.bottom_need_backward = [False] * len(layer.bottoms)
            if not contributes:
                layer.need_backward = False
            for j, blob in enumerate(layer.bottoms):
                if contributes:
                    under_loss.add(id(blob))
                else:
                    layer.bottom_need_backward[j] = False
                if not layer.bottom_need_backward[j]:
                    skip.add(id(blob))
        if param.force_backward:
            for layer in self.layers:
                layer.need_backward = True
                layer.bottom_need_backward = [
                    need or layer.impl.allow_force_backward(j) for j, need in enumerate(layer.bottom_need_backward)]
                layer.param_propagate_down = [True] * len(layer.blobs)
        for layer in self.layers:
            if getattr(layer.impl, "fixed_params", False):
                # statistics have no gradient (BatchNorm's backward leaves them alone)
                layer.param_propagate_down = [False] * len(layer.blobs)

    # ------------------------------------------------------------------------------------
    # pycaffe views
    # ------------------------------------------------------------------------------------
    @property
    def params(self) -> "collections.OrderedDict[str, list[Blob]]":
        return collections.OrderedDict((l.name, l.blobs) for l in self.layers if l.blobs)

    @property
    def layer_dict(self) -> "collections.OrderedDict[str, NetLayer]":
        return collections.OrderedDict((l.name, l) for l in self.layers)

    @property
    def _layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def top_names(self):
        return collections.OrderedDict((l.name, [n for n in l.top_names if n != AUTOMATIC_TOP])
                                       for l in self.layers)

    @property
    def bottom_names(self):
        return collections.OrderedDict((l.name, list(l.bottom_names)) for l in self.layers)

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [self.blob_loss_weights.get(n, 0.0) for n in self.blobs]

    @property
    def last_loss(self) -> float:
        """Caffe's objective of the last forward: Σ loss_weight·Σ top."""
        return float(sum(float(t) for t in self._loss_terms.values()))

    def _layer_index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        for i, layer in enumerate(self.layers):
            if layer.name == name:
                return i
        raise KeyError(f"no layer named '{name}' in {self._where()} (layers: {', '.join(self._layer_names)})")

    # ------------------------------------------------------------------------------------
    # forward / backward
    # ------------------------------------------------------------------------------------
    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Run layers start..end (names, inclusive); return ``{blob: array}`` of the outputs
        (or of ``end``'s tops) plus the ``blobs`` asked for."""
        blobs = list(blobs or [])
        start_i = self._layer_index(start, 0)
        end_i = self._layer_index(end, len(self.layers) - 1)
        if end is not None:
            wanted = set(self.top_names[end] + blobs)
        else:
            wanted = set(self.outputs + blobs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise ValueError(f"input blob arguments {sorted(kwargs)} do not match the net inputs {self.inputs}")
            for name, value in kwargs.items():
                value = np.asarray(value)
                if value.shape[0] != self.blobs[name].shape[0]:
                    raise ValueError(f"input '{name}' has batch size {value.shape[0]}, the blob has "
                                     f"{self.blobs[name].shape[0]}; reshape the blob first")
                self.blobs[name].data[...] = value
        self._forward_range(start_i, end_i)
        return {name: self.blobs[name].data for name in wanted}

    def _forward_backward(self) -> None:
        """One solver pass: forward, backward, and, with ``defer_metric_layers``, the metric
        layers last. Their tops then hold the same values as after ``forward()``."""
        last = len(self.layers) - 1
        deferred: list | None = [] if self.defer_metric_layers and self._metric_layers else None
        self._forward_range(0, last, deferred)
        self._backward_range(last, 0)
        for layer, staged in deferred or []:
            params = [blob.tensor for blob in layer.blobs]
            self._store_tops(layer, layer.impl.forward_staged(staged, params))

    def _forward_range(self, start: int, end: int, deferred: list | None = None) -> None:
        before, after = self._before_forward, self._after_forward
        for index in range(start, end + 1):
            for hook in before:
                hook(index)
            self._forward_one(index, deferred)
            for hook in after:
                hook(index)

    def _forward_one(self, index: int, deferred: list | None) -> None:
        layer = self.layers[index]
        if layer.is_source:
            return
        if deferred is not None and index in self._metric_layers:
            deferred.append((layer, layer.impl.stage(self._layer_bottoms(layer))))
            layer.saved = None
            self._loss_terms.pop(index, None)
            return
        loss = self._forward_layer(layer)
        if loss is None:
            self._loss_terms.pop(index, None)
        else:
            self._loss_terms[index] = loss

    def _layer_bottoms(self, layer: NetLayer) -> list[torch.Tensor]:
        """The bottom tensors, with the layer reshaped first if their shapes changed."""
        bottoms = [blob.tensor for blob in layer.bottoms]
        shapes = tuple(tuple(t.shape) for t in bottoms)
        if shapes != layer.bottom_shapes:
            layer.impl.reshape(list(shapes))  # Caffe reshapes before every forward; only shape changes matter
            layer.bottom_shapes = shapes
        return bottoms

    def _forward_layer(self, layer: NetLayer) -> torch.Tensor | None:
        """Run one layer; return its weighted loss (None when no top carries a loss weight)."""
        impl = layer.impl
        bottoms = self._layer_bottoms(layer)
        params = [blob.tensor for blob in layer.blobs]
        if layer.need_backward and self._records_grad:
            leaves = [t.detach().requires_grad_(need and t.is_floating_point())
                      for t, need in zip(bottoms, layer.bottom_need_backward)]
            pleaves = [p.detach().requires_grad_(need) for p, need in zip(params, layer.param_propagate_down)]
            if impl.explicit_backward:
                with torch.no_grad():
                    tops = impl.forward([t.detach() for t in leaves], params)
            else:
                with torch.enable_grad():
                    tops = impl.forward(leaves, pleaves)
            layer.saved = (leaves, pleaves, tops)
        else:
            with torch.no_grad():
                tops = impl.forward(bottoms, params)
            layer.saved = None
        return self._store_tops(layer, tops)

    def _store_tops(self, layer: NetLayer, tops: list[torch.Tensor]) -> torch.Tensor | None:
        """Put a layer's outputs into its top blobs; return its weighted loss, if any."""
        if len(tops) != len(layer.tops):
            raise NetError(f"layer '{layer.name}' ({layer.type}) produced {len(tops)} tops for "
                           f"{len(layer.tops)} top blobs")
        loss = None
        for blob, top, w in zip(layer.tops, tops, layer.loss_weights):
            if top.device != self.device or top.dtype != torch.float32:
                top = top.to(self.device, torch.float32)
            reshaped = blob.shape != tuple(top.shape)
            blob.tensor = top.detach()
            if w:
                if reshaped:
                    blob.grad_tensor.fill_(w)
                term = top.detach().sum() * w
                loss = term if loss is None else loss + term
        return loss

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Run backward from layer ``start`` down to ``end`` (names; default: all); return
        ``{blob: diff}`` for the inputs (or ``end``) plus the ``diffs`` asked for."""
        diffs = list(diffs or [])
        start_i = self._layer_index(start, len(self.layers) - 1)
        end_i = self._layer_index(end, 0)
        if end is not None:
            wanted = set(self.bottom_names[end] + diffs)
        else:
            wanted = set(self.inputs + diffs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise ValueError(f"top diff arguments {sorted(kwargs)} do not match the net outputs {self.outputs}")
            for name, value in kwargs.items():
                value = np.asarray(value)
                if value.shape[0] != self.blobs[name].shape[0]:
                    raise ValueError(f"diff for '{name}' is not batch sized ({value.shape[0]} vs "
                                     f"{self.blobs[name].shape[0]})")
                self.blobs[name].diff[...] = value
        self._backward_range(start_i, end_i)
        return {name: self.blobs[name].diff for name in wanted if name in self.blobs}

    def _backward_range(self, start: int, end: int) -> None:
        before, after = self._before_backward, self._after_backward
        for i in range(start, end - 1, -1):
            for hook in before:
                hook(i)
            layer = self.layers[i]
            if layer.need_backward and (layer.bottoms or any(layer.param_propagate_down)):
                self._backward_layer(layer)
            for hook in after:
                hook(i)

    def _record_current(self, layer: NetLayer):
        """What backward needs when no forward recorded it: Caffe's backward reads the blobs'
        current data, so autograd layers are re-run on the current bottoms (their tops are
        not written) and explicit-backward layers get the current top data."""
        bottoms = [blob.tensor for blob in layer.bottoms]
        params = [blob.tensor for blob in layer.blobs]
        leaves = [t.detach().requires_grad_(need and t.is_floating_point())
                  for t, need in zip(bottoms, layer.bottom_need_backward)]
        pleaves = [p.detach().requires_grad_(need) for p, need in zip(params, layer.param_propagate_down)]
        if layer.impl.explicit_backward or layer.type == "Split":
            tops = [blob.tensor for blob in layer.tops]
        else:
            self._layer_bottoms(layer)  # reshape the layer if the bottoms changed shape
            with torch.enable_grad():
                tops = layer.impl.forward(leaves, pleaves)
        return leaves, pleaves, tops

    def _backward_layer(self, layer: NetLayer) -> None:
        # without a recorded forward (net.backward() first), use the blobs as they are now
        leaves, pleaves, tops = layer.saved if layer.saved is not None else self._record_current(layer)
        top_diffs = [blob.grad_tensor for blob in layer.tops]
        down = layer.bottom_need_backward
        pdown = layer.param_propagate_down
        if layer.type == "Split":
            if down[0]:
                total = top_diffs[0].clone()
                for d in top_diffs[1:]:
                    total += d
                layer.bottoms[0].grad_tensor = total
            return
        if layer.impl.explicit_backward:
            bottom_grads, param_grads = layer.impl.backward(
                [t.detach() for t in leaves], [p.detach() for p in pleaves],
                [t.detach() for t in tops], top_diffs, list(down), list(pdown))
        elif getattr(layer.impl, "adds_param_diffs", False):
            # the layer's kernels add their weight gradients into the diffs themselves (Caffe's
            # accumulating GEMM) and hand autograd None for them (fast_conv.param_diffs)
            with fast_conv.param_diffs({id(p): blob for p, blob, need in zip(pleaves, layer.blobs, pdown) if need}):
                bottom_grads, param_grads = self._autograd_backward(leaves, pleaves, tops, top_diffs, down, pdown)
        else:
            bottom_grads, param_grads = self._autograd_backward(leaves, pleaves, tops, top_diffs, down, pdown)
        diff_ptrs = {d.data_ptr() for d in top_diffs}
        for blob, grad, need, leaf in zip(layer.bottoms, bottom_grads, down, leaves):
            if not need:
                continue
            if grad is None:
                grad = torch.zeros_like(leaf, dtype=torch.float32)
            elif grad.data_ptr() in diff_ptrs:
                grad = grad.clone()  # never let two blobs' diffs alias
            if grad.device != self.device or grad.dtype != torch.float32:
                grad = grad.to(self.device, torch.float32)
            blob.grad_tensor = _shaped(grad, blob.shape)
        for blob, grad, need in zip(layer.blobs, param_grads, pdown):
            if need and grad is not None:
                diff = blob.grad_tensor
                diff.add_(_shaped(grad, diff.shape))

    @staticmethod
    def _autograd_backward(leaves, pleaves, tops, top_diffs, down, pdown):
        outs, grads_out = [], []
        for top, diff in zip(tops, top_diffs):
            if top.requires_grad:
                outs.append(top)
                grads_out.append(_shaped(diff, top.shape))
        targets = [t for t, need in zip(leaves, down) if need and t.requires_grad]
        targets += [p for p, need in zip(pleaves, pdown) if need and p.requires_grad]
        found = {}
        if outs and targets:
            grads = _vector_jacobian(outs, targets, grads_out)
            found = {id(t): g for t, g in zip(targets, grads)}
        bottom_grads = [found.get(id(t)) if need else None for t, need in zip(leaves, down)]
        param_grads = [found.get(id(p)) if need else None for p, need in zip(pleaves, pdown)]
        return bottom_grads, param_grads

    def set_input_arrays(self, data, labels) -> None:
        """pycaffe's ``set_input_arrays``: feed the first layer, a MemoryData layer (its rules and
        messages are in ``engine.layer_types.memory_data.set_input_arrays``)."""
        from caffeseg.engine.layer_types.memory_data import set_input_arrays
        set_input_arrays(self, data, labels)

    # ------------------------------------------------------------------------------------
    # pycaffe's index-based surface, batching and hooks
    # ------------------------------------------------------------------------------------
    def _forward(self, start: int, end: int) -> float:
        """Caffe's ``ForwardFromTo`` by layer index (inclusive); returns the loss of that range."""
        self._forward_range(int(start), int(end))
        return float(sum(float(t) for i, t in self._loss_terms.items() if int(start) <= i <= int(end)))

    def _backward(self, start: int, end: int) -> None:
        """Caffe's ``BackwardFromTo`` by layer index, ``start >= end``."""
        self._backward_range(int(start), int(end))

    def before_forward(self, callback) -> None:
        """Call ``callback(layer_index)`` before each layer's forward."""
        self._before_forward.append(callback)

    def after_forward(self, callback) -> None:
        """Call ``callback(layer_index)`` after each layer's forward."""
        self._after_forward.append(callback)

    def before_backward(self, callback) -> None:
        """Call ``callback(layer_index)`` before each layer's backward step (every layer in
        the range, as in Caffe, also those that need no backward)."""
        self._before_backward.append(callback)

    def after_backward(self, callback) -> None:
        """Call ``callback(layer_index)`` after each layer's backward step."""
        self._after_backward.append(callback)

    def clear_param_diffs(self) -> None:
        """Zero every learnable parameter's diff in place (``Net::ClearParamDiffs``)."""
        for blob, _, _ in self.learnable_params:
            blob.grad_tensor.zero_()

    @property
    def _blobs(self) -> list[Blob]:
        return list(self.blobs.values())

    def _blob_indices(self, names) -> list[int]:
        index = {name: i for i, name in enumerate(self.blobs)}
        return [index[name] for name in names if name in index]

    @property
    def _inputs(self) -> list[int]:
        return self._blob_indices(self.inputs)

    @property
    def _outputs(self) -> list[int]:
        return self._blob_indices(self.outputs)

    def _bottom_ids(self, layer_index: int) -> list[int]:
        return self._blob_indices(self.layers[int(layer_index)].bottom_names)

    def _top_ids(self, layer_index: int) -> list[int]:
        return self._blob_indices(n for n in self.layers[int(layer_index)].top_names if n != AUTOMATIC_TOP)

    def _batch(self, blobs):
        """Cut ``{name: array}`` (equal lengths) into the net's batch size (the first blob's
        first axis); the last batch is padded with zeros."""
        if not blobs:
            return
        num = len(next(iter(blobs.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for start in range(0, num - num % batch_size, batch_size):
            yield {name: value[start:start + batch_size] for name, value in blobs.items()}
        remainder = num % batch_size
        if remainder:
            padded = {}
            for name, value in blobs.items():
                value = np.asarray(value)
                padding = np.zeros((batch_size - remainder,) + value.shape[1:])
                padded[name] = np.concatenate([value[-remainder:], padding])
            yield padded

    @staticmethod
    def _collect(store: dict, outs: dict) -> None:
        for name, value in outs.items():
            value = np.array(value, copy=True)
            if value.ndim == 0:
                store[name].append(value)
            else:
                store[name].extend(value)

    def _strip_padding(self, collected: dict, given: dict) -> dict:
        """Arrays of the collected batches, without the rows of the zero-padded last batch
        (per-sample results only; a scalar such as a loss has one value per batch)."""
        result = {name: np.asarray(values) for name, values in collected.items()}
        if given:
            num = len(next(iter(given.values())))
            pad = -num % next(iter(self.blobs.values())).shape[0]
            if pad:
                result = {name: value[:-pad] if len(value) == num + pad else value
                          for name, value in result.items()}
        return result

    def forward_all(self, blobs=None, **kwargs):
        """``forward`` over inputs of any length, in batches (the last one zero-padded, the
        padding dropped from the results): ``{blob: array}`` for the outputs and ``blobs``.
        Without inputs it is one forward pass (the data layers give the batch)."""
        names = set(self.outputs + list(blobs or []))
        collected: dict = {name: [] for name in names}
        batches = list(self._batch(kwargs)) if kwargs else [{}]
        for batch in batches:
            self._collect(collected, self.forward(blobs=blobs, **batch))
        return self._strip_padding(collected, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """``forward`` then ``backward`` per batch: inputs and output diffs given by name in
        ``kwargs`` (either may be missing); returns ``({blob: data}, {blob: diff})``."""
        collected = {name: [] for name in set(self.outputs + list(blobs or []))}
        collected_diffs = {name: [] for name in set(self.inputs + list(diffs or []))}
        forward_in = {name: kwargs[name] for name in self.inputs if name in kwargs}
        backward_in = {name: kwargs[name] for name in self.outputs if name in kwargs}
        forward_batches = list(self._batch(forward_in))
        backward_batches = list(self._batch(backward_in))
        for i in range(max(len(forward_batches), len(backward_batches), 1)):
            fb = forward_batches[i] if i < len(forward_batches) else {}
            bb = backward_batches[i] if i < len(backward_batches) else {}
            self._collect(collected, self.forward(blobs=blobs, **fb))
            self._collect(collected_diffs, self.backward(diffs=diffs, **bb))
        return self._strip_padding(collected, kwargs), self._strip_padding(collected_diffs, kwargs)

    # ------------------------------------------------------------------------------------
    def reshape(self) -> None:
        """Propagate input shapes through every layer (Caffe's ``Net::Reshape``)."""
        for layer in self.layers:
            if layer.is_source:
                continue
            shapes = [blob.shape for blob in layer.bottoms]
            top_shapes = layer.impl.reshape(shapes)
            layer.bottom_shapes = tuple(shapes)
            for blob, shape in zip(layer.tops, top_shapes):
                blob.reshape(*shape)

    # ------------------------------------------------------------------------------------
    # weights
    # ------------------------------------------------------------------------------------
    def copy_from(self, path) -> None:
        """Load a .caffemodel: layers matched by name, shapes checked (``CopyTrainedLayersFrom``)."""
        from caffeseg.engine.blobproto import blobproto_to_array, shape_equals, stored_shape
        from caffeseg.engine.caffemodel import read_caffemodel
        path = os.fspath(path)
        source = read_caffemodel(path)
        by_name = {}
        for layer in self.layers:
            by_name.setdefault(layer.name, layer)
        for src in source.layer:
            target = by_name.get(src.name)
            if target is None:
                continue
            if len(target.blobs) != len(src.blobs):
                raise WeightsMismatchError(
                    f"{path}: incompatible number of blobs for layer '{src.name}': the file has "
                    f"{len(src.blobs)}, the net ({self._where()}) has {len(target.blobs)}")
            for j, (blob, bp) in enumerate(zip(target.blobs, src.blobs)):
                if not shape_equals(bp, blob.shape):
                    raise WeightsMismatchError(self._mismatch_message(path, target, j, stored_shape(bp)))
                values = blobproto_to_array(bp, blob.shape, name=f"layer '{src.name}' param {j}")
                # np.array, not ascontiguousarray: that turns a 0-axis blob (PReLU channel_shared) into 1 axis
                blob.tensor.copy_(torch.from_numpy(np.array(values, dtype=np.float32, order="C")))
                if len(bp.diff) or len(bp.double_diff):
                    diff = blobproto_to_array(bp, blob.shape, diff=True, name=f"layer '{src.name}' param {j}")
                    blob.grad_tensor.copy_(torch.from_numpy(np.array(diff, dtype=np.float32, order="C")))

    def _mismatch_message(self, path, layer: NetLayer, j: int, file_shape) -> str:
        net_shape = layer.blobs[j].shape
        text = (f"{path}: cannot copy param {j} of layer '{layer.name}' ({layer.type}): the file has "
                f"shape {tuple(file_shape)}, the net ({self._where()}) needs {net_shape}. To learn this "
                f"layer from scratch instead, rename it in the prototxt.")
        is_conv_weight = layer.type == "Convolution" and j == 0 and len(net_shape) == 4 and len(file_shape) == 4
        if is_conv_weight and file_shape[0] == net_shape[0] and file_shape[2:] == net_shape[2:] \
                and {int(file_shape[1]), int(net_shape[1])} == {1, 3}:
            if file_shape[1] == 3:
                text += (" The weights were trained on RGB (3-channel) images but this net's input has 1 "
                         "channel (grayscale). Either build the dataset as RGB (3 channels), or do channel "
                         f"surgery: replace the '{layer.name}' weights by their sum over the RGB axis "
                         "(W.sum(axis=1, keepdims=True)), e.g. with `caffeseg surgery`.")
            else:
                text += (" The weights were trained on grayscale (1-channel) images but this net's input "
                         "has 3 channels (RGB). Build the dataset as grayscale, or repeat the weights over "
                         "3 channels divided by 3.")
        return text

    def share_with(self, other: "Net") -> None:
        """Use ``other``'s parameter values (data only, like ``ShareTrainedLayersWith``)."""
        by_name = {}
        for layer in other.layers:
            by_name.setdefault(layer.name, layer)
        for layer in self.layers:
            source = by_name.get(layer.name)
            if source is None or not layer.blobs:
                continue
            if len(source.blobs) != len(layer.blobs):
                raise NetError(f"share_with: layer '{layer.name}' has {len(layer.blobs)} params here and "
                               f"{len(source.blobs)} in the other net")
            for j, (mine, theirs) in enumerate(zip(layer.blobs, source.blobs)):
                if mine.shape != theirs.shape:
                    raise NetError(f"share_with: layer '{layer.name}' param {j} has shape {mine.shape} here and "
                                   f"{theirs.shape} in the other net")
                mine.share_data(theirs)

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        from caffeseg.engine.blobproto import array_to_blobproto
        out = caffe_pb2.NetParameter()
        out.name = self.param.name
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for blob in layer.blobs:
                bp = array_to_blobproto(blob.data, blob.diff if write_diff else None)
                lp.blobs.add().CopyFrom(bp)
        return out

    def save(self, path, write_diff: bool = False) -> None:
        """Write the net with its current weights as a binary .caffemodel."""
        from caffeseg.engine.caffemodel import write_caffemodel
        write_caffemodel(os.fspath(path), self.to_proto(write_diff))

    def save_hdf5(self, path, write_diff: bool = False) -> None:
        """Write the weights as Caffe's ``Net::ToHDF5`` does: group ``data`` (and ``diff``)
        with one subgroup per layer and datasets ``"0"``, ``"1"``, ... per parameter blob;
        a parameter shared from another layer is stored only at its owner (diffs always)."""
        import h5py
        path = os.fspath(path)
        with h5py.File(path, "w") as out:
            data = out.create_group("data")
            diff = out.create_group("diff") if write_diff else None
            for layer in self.layers:
                layer_data = data.require_group(layer.name)
                layer_diff = diff.require_group(layer.name) if diff is not None else None
                for j, blob in enumerate(layer.blobs):
                    if j not in layer.shared_param_ids:
                        layer_data.create_dataset(str(j), data=np.array(blob.data, dtype=np.float32))
                    if layer_diff is not None:
                        layer_diff.create_dataset(str(j), data=np.array(blob.diff, dtype=np.float32))

    def load_hdf5(self, path) -> None:
        """Copy weights from a ``save_hdf5`` file (``CopyTrainedLayersFromHDF5``): layers
        matched by name, unknown layers ignored, shapes must match exactly."""
        import h5py
        path = os.fspath(path)
        by_name = {}
        for layer in self.layers:
            by_name.setdefault(layer.name, layer)
        try:
            source = h5py.File(path, "r")
        except OSError as err:
            raise WeightsMismatchError(f"{path}: cannot open as HDF5 weights ({err})") from None
        with source:
            if "data" not in source:
                raise WeightsMismatchError(f"{path}: no 'data' group; not a Caffe HDF5 weights file")
            for name, group in source["data"].items():
                target = by_name.get(name)
                if target is None:
                    continue
                if len(group) > len(target.blobs):
                    raise WeightsMismatchError(
                        f"{path}: incompatible number of blobs for layer '{name}': the file has "
                        f"{len(group)}, the net ({self._where()}) has {len(target.blobs)}")
                for j, blob in enumerate(target.blobs):
                    if str(j) not in group:
                        if j in target.shared_param_ids:
                            continue  # stored at the owner
                        raise WeightsMismatchError(f"{path}: layer '{name}' has no param {j} (the net has "
                                                   f"{len(target.blobs)} for it)")
                    values = np.asarray(group[str(j)][()], dtype=np.float32)
                    if tuple(values.shape) != blob.shape:
                        raise WeightsMismatchError(self._mismatch_message(path, target, j, values.shape))
                    blob.tensor.copy_(torch.from_numpy(np.ascontiguousarray(values)).reshape(blob.shape))

    def __repr__(self):
        return f"<Net '{self.name}' with {len(self.layers)} layers on {self.device}>"
