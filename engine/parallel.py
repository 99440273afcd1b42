"""Training one net on several devices: Caffe's multi-GPU semantics on ``torch.distributed``.

One process per device ("rank"), as ``torchrun`` starts them: each reads ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` (or is handed an ``init_method`` address) and
joins one process group: NCCL when the solver's net is on a GPU, gloo on the CPU. What Caffe's
``P2PSync``/``NCCL`` classes do (src/caffe/parallel.cpp, solver.cpp), this module does:

* every rank builds the same solver (``caffe.set_solver_count(N)``, ``set_solver_rank(r)``
  first, as pycaffe's python/train.py); its Data layers in TRAIN phase keep record k of the
  database stream only when ``k % N == r`` (``DataLayer::Skip``), so the shards never overlap
  and one iteration of N ranks reads exactly the records one process with ``iter_size × N``
  reads (CAFFE_NOTES: the effective batch is N × batch_size × iter_size);
* ``bcast()`` gives every rank rank 0's learnable weights (``NCCL::Broadcast``) once, after a
  restore or weight loading;
* ``on_gradients_ready()`` (a solver callback: after the ``iter_size`` passes, before
  ``ApplyUpdate``) sums every learnable parameter's diff over the ranks and scales it by 1/N,
  as ``ncclAllReduce`` + ``caffe_gpu_scal(1/solver_count)``. So clipping, the ``iter_size``
  normalisation and weight decay in ``ApplyUpdate`` see the rank-averaged diff, every rank
  applies the same update, and the weights stay identical without further exchange;
* in the same collective the iteration's loss and the train net's outputs are averaged over
  the ranks (Caffe's root solver shows only its own): ``IterationInfo.loss``, the smoothed
  loss and the outputs a runner records then describe the whole effective batch;
* ``any_rank(flag)`` is the one extra: a runner asks it before each iteration whether any rank
  was told to stop, so all ranks stop at the same iteration (a rank that stopped alone would
  leave the others waiting in the next all-reduce).

Test nets, snapshots and metrics belong to rank 0 (``Caffe::root_solver()``): the solver builds
test nets only there. Random seeds are not offset per rank (Caffe's workers copy the root's
``random_seed`` too), so dropout masks of the ranks coincide when a seed is set.

    # each rank (env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as torchrun sets them):
    caffe.set_solver_count(world); caffe.set_solver_rank(rank); caffe.set_multiprocess(True)
    solver = caffe.get_solver("solver.prototxt")
    nccl = caffe.NCCL(solver, uid)      # uid: caffe.NCCL.new_uid() of rank 0, or b"" for env://
    nccl.bcast()
    solver.add_callback(nccl)
    solver.step(n)
"""
from __future__ import annotations

import atexit
import datetime
import os
import socket

import torch
import torch.distributed as dist

from caffeseg.engine import runtime

#: seconds a rank waits in a collective for the others (rank 0 may be validating or writing a
#: snapshot meanwhile); a peer that died is noticed sooner: its connection closes.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("CAFFESEG_COLLECTIVE_TIMEOUT_S", 4 * 3600))


class ParallelError(RuntimeError):
    """The process group cannot be formed as asked (the message names the variable or value)."""


def new_uid() -> bytes:
    """A rendezvous address for a new process group (pycaffe's ``NCCL.new_uid()``, bytes):
    ``tcp://127.0.0.1:PORT`` with a port free right now on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}".encode()


def available() -> bool:
    return dist.is_available()


def _backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join(device: torch.device, uid: bytes | str | None = None, world_size: int | None = None,
         rank: int | None = None) -> None:
    """Join (once per process) the process group of ``world_size`` ranks: ``uid`` is the
    ``init_method`` address, or empty for ``env://`` (``MASTER_ADDR``/``MASTER_PORT``).
    World size and rank default to ``caffe.solver_count()``/``solver_rank()``."""
    if dist.is_initialized():
        return
    world = runtime.solver_count() if world_size is None else int(world_size)
    me = runtime.solver_rank() if rank is None else int(rank)
    if world < 2:
        raise ParallelError("multi-device training needs caffe.set_solver_count(N) with N >= 2 first")
    if not 0 <= me < world:
        raise ParallelError(f"solver rank {me} is outside 0..{world - 1}")
    address = uid.decode() if isinstance(uid, bytes) else (uid or "")
    if not address:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ParallelError(f"no rendezvous address: pass NCCL.new_uid() of rank 0 or set {', '.join(missing)}")
        address = "env://"
    dist.init_process_group(_backend_for(device), init_method=address, world_size=world, rank=me,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    # The group's C++ threads must be stopped before the interpreter exits: left running, their
    # std::thread destructors abort the process ("terminate called without an active exception").
    atexit.register(leave)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class GradientSync:
    """The solver callback that keeps N ranks in step (pycaffe's ``caffe.NCCL``): see the module
    docstring. ``solver`` is the engine ``Solver`` of this rank."""

    def __init__(self, solver, uid: bytes | str | None = None):
        self.solver = solver
        self.uid = uid
        self._joined = False

    # -- setup --------------------------------------------------------------------------------
    def _params(self):
        return [entry[0] for entry in self.solver.net.learnable_params]

    def _device(self) -> torch.device:
        params = self._params()
        return params[0].tensor.device if params else torch.device("cpu")

    def _join(self):
        if not self._joined:
            join(self._device(), self.uid)
            self._joined = True

    @property
    def world_size(self) -> int:
        self._join()
        return dist.get_world_size()

    @property
    def rank(self) -> int:
        self._join()
        return dist.get_rank()

    @torch.no_grad()
    def bcast(self) -> None:
        """Every rank's learnable weights ← rank 0's (``NCCL::Broadcast``), in one collective."""
        self._join()
        params = self._params()
        if not params:
            return
        flat = torch.cat([b.tensor.reshape(-1) for b in params])
        dist.broadcast(flat, src=0)
        offset = 0
        for blob in params:
            n = blob.tensor.numel()
            weight = blob.tensor
            weight.copy_(flat[offset:offset + n].view_as(weight))
            blob.tensor = weight  # marks the device copy current (host mirrors refresh on read)
            offset += n

    # -- the solver callback ------------------------------------------------------------------
    def on_start(self) -> None:
        """Nothing to do before an iteration's passes (Caffe's NCCL::on_start is empty too)."""

    @torch.no_grad()
    def on_gradients_ready(self) -> None:
        """Σ over ranks of each learnable diff, × 1/N; the loss and outputs averaged alike."""
        self._join()
        world = dist.get_world_size()
        params = self._params()
        net = self.solver.net
        outputs = [net.blobs[name] for name in net.outputs]
        device = self._device()
        loss = torch.tensor([float(getattr(self.solver, "iteration_loss", 0.0))], dtype=torch.float32,
                            device=device)
        pieces = [b.grad_tensor.reshape(-1) for b in params]
        pieces += [o.tensor.detach().reshape(-1).to(device=device, dtype=torch.float32) for o in outputs]
        flat = torch.cat(pieces + [loss])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.mul_(1.0 / world)
        offset = 0
        for blob in params:
            diff = blob.grad_tensor
            n = diff.numel()
            diff.copy_(flat[offset:offset + n].view_as(diff))
            blob.grad_tensor = diff
            offset += n
        for blob in outputs:
            value = blob.tensor
            n = value.numel()
            blob.tensor = flat[offset:offset + n].view(value.shape).to(dtype=value.dtype, device=value.device).clone()
            offset += n
        self.solver.iteration_loss = float(flat[offset])

    # -- agreement ----------------------------------------------------------------------------
    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop request)."""
        self._join()
        value = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        self._join()
        dist.barrier()
