"""Caffe's ``Solver`` loop (``Solver::Step``, ``SGDSolver::ApplyUpdate``) over the engine ``Net``.

One iteration (``Solver::Step``): zero the param diffs → test if due → ``iter_size``
forward/backward passes (diffs accumulate) → smoothed loss, display → ``ApplyUpdate``
(rate for the current ``iter``; global L2 clipping on the summed diffs; per parameter:
divide by ``iter_size``, weight decay, the solver's rule; ``W -= diff``) → ``iter += 1`` →
snapshot if due.

Observers: ``add_callback(on_start, on_gradients)`` like pycaffe (called at the top of each
iteration and after the gradients, before the update), and ``add_iteration_listener(fn)``
which receives an ``IterationInfo`` (iter, loss, smoothed loss, lr, outputs) after every
update, so a job runner can chart training without parsing logs.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable

import numpy as np
import torch

from caffeseg.engine import rng, runtime
from caffeseg.engine.proto import caffe_pb2
from caffeseg.engine.solvers import updates
from caffeseg.engine.solvers.lr_policy import LearningRate, SolverConfigError

log = logging.getLogger("caffeseg.engine.solver")


@dataclasses.dataclass
class IterationInfo:
    iter: int                 #: updates completed (after this iteration's update)
    loss: float               #: this iteration's loss (mean over iter_size passes)
    smoothed_loss: float      #: Caffe's average_loss window
    lr: float                 #: the rate used for this update
    outputs: dict             #: train-net output name -> numpy array (last pass)
    seconds: float            #: wall time of the iteration


@dataclasses.dataclass
class TestResult:
    iter: int
    net_index: int
    outputs: dict             #: output name -> mean value (float or array) over test_iter passes
    loss: float | None = None  #: mean objective over the passes, when test_compute_loss


def _merged_state(phase: int, net_param: caffe_pb2.NetParameter, extra: caffe_pb2.NetState | None):
    """Caffe: NetState(phase) ← MergeFrom(file state) ← MergeFrom(train_state/test_state[i])."""
    state = caffe_pb2.NetState()
    state.phase = phase
    state.MergeFrom(net_param.state)
    if extra is not None:
        state.MergeFrom(extra)
    return state


def build_net(net_param: caffe_pb2.NetParameter, state: caffe_pb2.NetState, source: str):
    """Construct an engine ``Net`` from a NetParameter with the solver's merged NetState."""
    from caffeseg.engine.net import Net
    param = caffe_pb2.NetParameter()
    param.CopyFrom(net_param)
    param.state.CopyFrom(state)
    kwargs = dict(stages=list(state.stage), level=int(state.level))
    if hasattr(Net, "from_param"):
        return Net.from_param(param, state.phase, **kwargs)
    try:
        return Net(param, state.phase, **kwargs)
    except TypeError:
        # A Net that only takes file paths: hand it the upgraded text form
        import tempfile
        from caffeseg.engine.prototxt import format_message
        directory = os.path.dirname(os.path.abspath(source)) if source else None
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", dir=directory, delete=False) as f:
            f.write(format_message(param))
        try:
            return Net(f.name, state.phase, **kwargs)
        finally:
            os.unlink(f.name)


def _net_loss(net) -> float:
    """Σ loss_weight · Σ top of the last pass, Caffe's objective (``Net::ForwardBackward``)."""
    return float(net.last_loss)


class Solver:
    """``caffe.get_solver`` result; ``type`` picks the update rule (SGD, Nesterov, ...)."""

    solver_type: str | None = None

    def __init__(self, solver_file: str | caffe_pb2.SolverParameter, net_factory: Callable | None = None):
        """``net_factory(net_param, state, source)`` builds each net (default: the engine ``Net``).
        A net from it needs the surface the solver uses: ``_forward_backward()`` (one pass),
        ``last_loss``, ``forward()``, ``blobs``, ``outputs``, ``learnable_params``, ``params``,
        ``copy_from``/``save``/``share_with`` (see tests/test_solvers_golden.py's ReferenceNet)."""
        from caffeseg.engine.prototxt import read_solver
        self._build_net = net_factory or build_net
        if isinstance(solver_file, caffe_pb2.SolverParameter):
            self.param, self.source = solver_file, ""
        else:
            self.source = str(solver_file)
            self.param = read_solver(self.source)
        p = self.param
        if self.solver_type is not None:
            if p.HasField("type") and p.type != self.solver_type:
                # pycaffe's typed classes ignore the file's type; say so instead of surprising the user
                log.warning("%s: solver type '%s' overridden by %s", self.source, p.type, type(self).__name__)
            p.type = self.solver_type
        updates.check_solver_param(p)
        self.lr_policy = LearningRate(p)
        if p.average_loss < 1:
            raise SolverConfigError("average_loss must be >= 1")
        self._snapshot_prefix()
        if p.random_seed >= 0:
            # before the nets are built, so fillers are reproducible
            rng.set_seed(p.random_seed)
        self.iter = 0
        self._callbacks: list[tuple[Callable | None, Callable | None]] = []
        self._listeners: list[Callable[[IterationInfo], None]] = []
        self._test_listeners: list[Callable[[TestResult], None]] = []
        self.losses: list[float] = []
        self.smoothed_loss = 0.0
        self.last_lr = float(p.base_lr)
        self.requested_early_exit = False
        self.iteration_loss = 0.0  # the current iteration's loss, for gradient callbacks
        self._init_train_net()
        self._init_test_nets()
        for weights in self._weight_files():
            for net in [self.net] + self.test_nets:
                net.copy_from(weights)
        self._params = [entry[0] for entry in self.net.learnable_params]
        self._mults = [(float(entry[1]), float(entry[2])) for entry in self.net.learnable_params]
        slots = updates.HISTORY_SLOTS[p.type]
        # Caffe's history layout: all first-state blobs, then all second-state blobs
        self.history = [torch.zeros_like(b.tensor) for _ in range(slots) for b in self._params]

    # -- construction ----------------------------------------------------------------------
    def _snapshot_prefix(self):
        p = self.param
        if not p.HasField("snapshot_prefix") and self.source:
            p.snapshot_prefix = os.path.splitext(self.source)[0]
        elif p.snapshot_prefix and os.path.isdir(p.snapshot_prefix) and self.source:
            stem = os.path.splitext(os.path.basename(self.source))[0]
            p.snapshot_prefix = os.path.join(p.snapshot_prefix, stem)
        if p.snapshot > 0 and not p.snapshot_prefix:
            raise SolverConfigError("snapshot > 0 needs snapshot_prefix")

    def _read_net_file(self, path: str) -> caffe_pb2.NetParameter:
        from caffeseg.engine.prototxt import read_net
        # Caffe opens net files relative to the process working directory
        return read_net(path)

    def _init_train_net(self):
        p = self.param
        given = [f for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
        if len(given) != 1:
            raise SolverConfigError(
                f"{self.source or 'solver'}: exactly one of train_net_param, train_net, net_param, net is "
                f"required (found {', '.join(given) or 'none'})")
        field = given[0]
        if field in ("train_net_param", "net_param"):
            net_param, source = getattr(p, field), self.source
        else:
            source = getattr(p, field)
            net_param = self._read_net_file(source)
        state = _merged_state(caffe_pb2.TRAIN, net_param, p.train_state if p.HasField("train_state") else None)
        self.net = self._build_net(net_param, state, source)

    def _init_test_nets(self):
        p = self.param
        specs: list[tuple[caffe_pb2.NetParameter, str]] = [(n, self.source) for n in p.test_net_param]
        specs += [(self._read_net_file(f), f) for f in p.test_net]
        generic = p.HasField("net") or p.HasField("net_param")
        remaining = len(p.test_iter) - len(specs)
        if generic and remaining > 0:
            net_param = p.net_param if p.HasField("net_param") else self._read_net_file(p.net)
            specs += [(net_param, p.net or self.source)] * remaining
        elif not generic and len(p.test_iter) != len(specs):
            raise SolverConfigError(f"test_iter has {len(p.test_iter)} entries for {len(specs)} test nets")
        if len(p.test_state) and len(p.test_state) != len(specs):
            raise SolverConfigError(f"test_state has {len(p.test_state)} entries for {len(specs)} test nets")
        if specs and p.test_interval <= 0:
            raise SolverConfigError("test nets need test_interval > 0")
        self.test_nets = []
        if runtime.solver_rank() != 0:
            return  # multi-device training tests on rank 0 only (Caffe: InitTestNets on the root solver)
        for i, (net_param, source) in enumerate(specs):
            extra = p.test_state[i] if len(p.test_state) else None
            state = _merged_state(caffe_pb2.TEST, net_param, extra)
            self.test_nets.append(self._build_net(net_param, state, source))

    def _weight_files(self):
        files = []
        for entry in self.param.weights:
            files += [w.strip() for w in entry.split(",") if w.strip()]
        return files

    # -- observers -------------------------------------------------------------------------
    def add_callback(self, on_start=None, on_gradients=None):
        """pycaffe's hook: ``on_start()`` at the top of each iteration, ``on_gradients()`` before the update.
        ``add_callback(nccl)`` (one object with ``on_start``/``on_gradients_ready``, e.g.
        ``caffe.NCCL``) registers its two methods, as pycaffe's overload does."""
        if on_gradients is None and hasattr(on_start, "on_gradients_ready"):
            on_start, on_gradients = on_start.on_start, on_start.on_gradients_ready
        self._callbacks.append((on_start, on_gradients))

    def add_iteration_listener(self, fn: Callable[[IterationInfo], None]):
        self._listeners.append(fn)

    def add_test_listener(self, fn: Callable[[TestResult], None]):
        self._test_listeners.append(fn)

    # -- the loop --------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """Rate for the next update (no multistep side effect, unlike Caffe's pycaffe call)."""
        saved = self.lr_policy.current_step
        try:
            return self.lr_policy.rate(self.iter)
        finally:
            self.lr_policy.current_step = saved

    def _clear_param_diffs(self):
        for blob in self._params:
            diff = blob.grad_tensor
            diff.zero_()
            blob.grad_tensor = diff  # marks the device copy current (host mirrors refresh on read)

    def _forward_backward(self) -> float:
        # not net.forward(): its host copies of the outputs would stall an accelerator
        # between forward and backward
        self.net._forward_backward()
        return _net_loss(self.net)

    def _update_smoothed_loss(self, loss: float, start_iter: int):
        window = self.param.average_loss
        if len(self.losses) < window:
            self.losses.append(loss)
            self.smoothed_loss = (self.smoothed_loss * (len(self.losses) - 1) + loss) / len(self.losses)
        else:
            idx = (self.iter - start_iter) % window
            self.smoothed_loss += (loss - self.losses[idx]) / window
            self.losses[idx] = loss

    def step(self, iters: int):
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.losses, self.smoothed_loss = [], 0.0
        while self.iter < stop_iter:
            started = time.perf_counter()
            self._clear_param_diffs()
            if (p.test_interval > 0 and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
            for on_start, _ in self._callbacks:
                if on_start:
                    on_start()
            loss = 0.0
            for _ in range(max(1, p.iter_size)):
                loss += self._forward_backward()
            loss /= max(1, p.iter_size)
            # A gradient callback may replace it (engine.parallel: the mean over the ranks), so
            # the smoothed loss, display and outputs are taken after the callbacks.
            self.iteration_loss = loss
            for _, on_gradients in self._callbacks:
                if on_gradients:
                    on_gradients()
            loss = self.iteration_loss
            self._update_smoothed_loss(loss, start_iter)
            outputs = {name: np.array(self.net.blobs[name].data, copy=True) for name in self.net.outputs}
            if p.display > 0 and self.iter % p.display == 0:
                log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
                for name, value in outputs.items():
                    for k, v in enumerate(np.ravel(value)):
                        log.info("    Train net output #%d: %s = %g", k, name, v)
            rate = self.apply_update()
            self.iter += 1
            info = IterationInfo(self.iter, loss, self.smoothed_loss, rate, outputs,
                                 time.perf_counter() - started)
            for fn in self._listeners:
                fn(info)
            if p.snapshot > 0 and self.iter % p.snapshot == 0:
                self.snapshot()
            if self.requested_early_exit:
                break

    def solve(self, resume_file: str | None = None):
        p = self.param
        if resume_file:
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (p.snapshot == 0 or self.iter % p.snapshot != 0):
            self.snapshot()
        if p.display > 0 and self.iter % p.display == 0:
            # Caffe's final forward-only pass for the log
            self.net.forward()
        if p.test_interval > 0 and self.iter % p.test_interval == 0:
            self.test_all()

    def share_weights(self, net) -> None:
        """pycaffe's ``solver.share_weights(net)``: ``net`` uses this solver's training-net
        weights (``Net::ShareTrainedLayersWith``)."""
        net.share_with(self.net)

    # -- the update ------------------------------------------------------------------------
    @torch.no_grad()
    def apply_update(self) -> float:
        p = self.param
        rate = self.lr_policy.rate(self.iter)
        self.last_lr = rate
        if p.display > 0 and self.iter % p.display == 0:
            log.info("Iteration %d, lr = %g", self.iter, rate)
        diffs = [b.grad_tensor for b in self._params]
        updates.clip_gradients(diffs, float(p.clip_gradients))
        rule = updates.UPDATE_RULES[p.type]
        n = len(self._params)
        slots = updates.HISTORY_SLOTS[p.type]
        for i, blob in enumerate(self._params):
            lr_mult, decay_mult = self._mults[i]
            weight, diff = blob.tensor, blob.grad_tensor
            history = [self.history[i + k * n] for k in range(slots)]
            for w, d, h in updates.slices(weight, diff, history):
                updates.normalize(d, p.iter_size)
                updates.regularize(d, w, float(p.weight_decay) * decay_mult, p.regularization_type)
                rule(d, h, rate * lr_mult, p, self.iter)
                w.sub_(d)
            # rebinding marks the device tensors as the current copies, so a host mirror
            # (on an accelerator) is refreshed the next time .data/.diff is read
            blob.tensor = weight
            blob.grad_tensor = diff
        return rate

    # -- testing ---------------------------------------------------------------------------
    def test_all(self) -> list[TestResult]:
        return [self.test(i) for i in range(len(self.test_nets))]

    @torch.no_grad()
    def test(self, index: int = 0) -> TestResult:
        p = self.param
        net = self.test_nets[index]
        net.share_with(self.net)
        sums: dict[str, np.ndarray] = {}
        loss = 0.0
        iters = int(p.test_iter[index]) if index < len(p.test_iter) else 0
        for _ in range(iters):
            net.forward()
            if p.test_compute_loss:
                loss += _net_loss(net)
            for name in net.outputs:
                value = np.array(net.blobs[name].data, dtype=np.float64, copy=True)
                sums[name] = sums[name] + value if name in sums else value
        means = {name: (v / max(1, iters)) for name, v in sums.items()}
        result = TestResult(self.iter, index,
                            {k: (float(np.ravel(v)[0]) if np.size(v) == 1 else v) for k, v in means.items()},
                            loss / max(1, iters) if p.test_compute_loss else None)
        if result.loss is not None:
            log.info("Test loss: %g", result.loss)
        for name, value in result.outputs.items():
            log.info("Test net output: %s = %s", name, value)
        for fn in self._test_listeners:
            fn(result)
        return result

    # -- snapshots -------------------------------------------------------------------------
    def snapshot_paths(self, iteration: int | None = None) -> tuple[str, str]:
        it = self.iter if iteration is None else iteration
        base = f"{self.param.snapshot_prefix}_iter_{it}"
        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            return base + ".caffemodel.h5", base + ".solverstate.h5"
        return base + ".caffemodel", base + ".solverstate"

    def snapshot(self) -> tuple[str, str]:
        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            raise SolverConfigError("snapshot_format HDF5 is not supported; use BINARYPROTO (the default)")
        model_path, state_path = self.snapshot_paths()
        directory = os.path.dirname(model_path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._save_net(model_path)
        from caffeseg.engine.blobproto import array_to_blobproto
        from caffeseg.engine.caffemodel import write_solverstate
        state = caffe_pb2.SolverState()
        state.iter = self.iter
        state.learned_net = model_path
        state.current_step = self.lr_policy.current_step
        for h in self.history:
            state.history.append(array_to_blobproto(h.detach().cpu().numpy()))
        write_solverstate(state_path, state)
        log.info("Snapshotting to %s and %s", model_path, state_path)
        return model_path, state_path

    def _save_net(self, path: str):
        if self.param.snapshot_diff:
            try:
                self.net.save(path, write_diff=True)
                return
            except TypeError:
                pass
        self.net.save(path)

    def restore(self, state_file: str):
        from caffeseg.engine.blobproto import blobproto_to_array
        from caffeseg.engine.caffemodel import read_solverstate
        if state_file.endswith(".h5"):
            raise SolverConfigError(f"{state_file}: HDF5 solver states are not supported")
        state = read_solverstate(state_file)
        if len(state.history) != len(self.history):
            raise SolverConfigError(
                f"{state_file}: holds {len(state.history)} history blobs but this {self.param.type} solver "
                f"has {len(self.history)} (the net or solver type differs from the one that wrote it)")
        if state.HasField("learned_net") and state.learned_net:
            self.net.copy_from(state.learned_net)
        for i, (bp, h) in enumerate(zip(state.history, self.history)):
            try:
                arr = blobproto_to_array(bp, target_shape=tuple(h.shape), name=f"{state_file} history {i}")
            except ValueError as err:
                raise SolverConfigError(str(err)) from None
            h.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(h.shape))
        self.iter = int(state.iter)
        self.lr_policy.current_step = int(state.current_step)


def _typed(name: str):
    return type(f"{name}Solver", (Solver,), {"solver_type": name,
                                              "__doc__": f"Caffe's {name} solver."})


SGDSolver = _typed("SGD")
NesterovSolver = _typed("Nesterov")
AdaGradSolver = _typed("AdaGrad")
RMSPropSolver = _typed("RMSProp")
AdaDeltaSolver = _typed("AdaDelta")
AdamSolver = _typed("Adam")

_BY_TYPE = {"SGD": SGDSolver, "Nesterov": NesterovSolver, "AdaGrad": AdaGradSolver,
            "RMSProp": RMSPropSolver, "AdaDelta": AdaDeltaSolver, "Adam": AdamSolver}


def get_solver(solver_file, net_factory: Callable | None = None) -> Solver:
    """``caffe.get_solver``: the solver class named by the file's ``type`` (default SGD)."""
    from caffeseg.engine.prototxt import read_solver
    param = solver_file if isinstance(solver_file, caffe_pb2.SolverParameter) else read_solver(str(solver_file))
    cls = _BY_TYPE.get(param.type)
    if cls is None:
        raise SolverConfigError(f"{solver_file}: solver type '{param.type}' is not one of {', '.join(_BY_TYPE)}")
    return cls(solver_file, net_factory)
