"""Caffe's per-parameter update rules (``*Solver::ComputeUpdateValue``) over torch tensors.

Every function works in place on float32 tensors: ``diff`` is the gradient after clipping,
``iter_size`` normalisation and regularisation, and on return it holds the step that the net
subtracts (``W -= diff``). ``history`` is the list of state tensors of that parameter, laid
out as in Caffe's SolverState (see ``history_slots``).
"""
from __future__ import annotations

import math

import torch

#: how many history tensors each solver keeps per learnable parameter
HISTORY_SLOTS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}
SOLVER_TYPES = tuple(HISTORY_SLOTS)

#: elements per slice of a CPU parameter in ``slices`` (1 MiB of float32)
UPDATE_SLICE = 1 << 18


def slices(weight, diff, history, size=None):
    """``(weight, diff, history)`` of one parameter as slices of ``size`` elements, to update
    one after the other; one whole-tensor piece off the CPU, with more than one torch thread, or
    for non-contiguous tensors.

    Why: every rule below is element-wise but runs as 4-10 passes over the parameter. For
    fc6/fc7 (37.7M and 16.8M weights) each pass goes through memory; run on a slice that
    stays in cache, the same passes cost a fraction (bench/solver_update.py, bench/RESULTS.md).
    The results are bit-identical: no rule mixes elements, and each element sees the same
    float32 operations in the same order. With several threads each slice's operation is a
    parallel region whose sleeping threads (the passive wait, jobs/threads.py) must be woken:
    1.7-1.9× the whole-tensor time at 2 threads, so there the update stays whole."""
    size = UPDATE_SLICE if size is None else int(size)
    tensors = [weight, diff] + list(history)
    count = weight.numel()
    if (count <= size or weight.device.type != "cpu" or torch.get_num_threads() > 1
            or any(t.numel() != count or not t.is_contiguous() for t in tensors)):
        yield weight, diff, list(history)
        return
    flat = [t.view(-1) for t in tensors]
    for start in range(0, count, size):
        part = [t[start:start + size] for t in flat]
        yield part[0], part[1], part[2:]


def normalize(diff: torch.Tensor, iter_size: int) -> None:
    """Average the gradients summed over ``iter_size`` forward/backward passes."""
    if iter_size > 1:
        diff.mul_(1.0 / iter_size)


def regularize(diff: torch.Tensor, weight: torch.Tensor, local_decay: float, kind: str) -> None:
    """Add Caffe's weight-decay term to the gradient (before the solver's own rule)."""
    if local_decay == 0:
        return
    if kind == "L2":
        diff.add_(weight, alpha=local_decay)
    elif kind == "L1":
        diff.add_(torch.sign(weight), alpha=local_decay)
    else:
        raise ValueError(f"regularization_type '{kind}' is not L1 or L2")


def clip_gradients(diffs: list[torch.Tensor], clip: float) -> float:
    """Caffe's global L2 clipping over all learnable diffs; returns the norm before clipping."""
    if clip < 0:
        return -1.0
    sumsq = 0.0
    for d in diffs:
        # Caffe accumulates each blob's sum of squares in float (cblas dot), then sums in double
        sumsq += float(torch.dot(d.reshape(-1), d.reshape(-1)))
    norm = math.sqrt(sumsq)
    if norm > clip:
        factor = clip / norm
        for d in diffs:
            d.mul_(factor)
    return norm


def sgd(diff, history, local_rate, p, iteration):
    v = history[0]
    v.mul_(p.momentum).add_(diff, alpha=local_rate)
    diff.copy_(v)


def nesterov(diff, history, local_rate, p, iteration):
    v = history[0]
    previous = v.clone()
    v.mul_(p.momentum).add_(diff, alpha=local_rate)
    # u = (1 + mu) V - mu V_prev
    diff.copy_(v).mul_(1.0 + p.momentum).add_(previous, alpha=-p.momentum)


def adagrad(diff, history, local_rate, p, iteration):
    h = history[0]
    h.addcmul_(diff, diff)
    denom = h.sqrt().add_(p.delta)
    diff.div_(denom).mul_(local_rate)


def rmsprop(diff, history, local_rate, p, iteration):
    h = history[0]
    rho = p.rms_decay
    h.mul_(rho).addcmul_(diff, diff, value=1.0 - rho)
    denom = h.sqrt().add_(p.delta)
    diff.div_(denom).mul_(local_rate)


def adadelta(diff, history, local_rate, p, iteration):
    grad_sq, update_sq = history
    mu, delta = p.momentum, p.delta
    grad_sq.mul_(mu).addcmul_(diff, diff, value=1.0 - mu)
    # v = g * sqrt((D + delta) / (H + delta)), computed in Caffe's order of operations
    ratio = (update_sq + delta) / (grad_sq + delta)
    diff.mul_(ratio.sqrt_())
    update_sq.mul_(mu).addcmul_(diff, diff, value=1.0 - mu)
    diff.mul_(local_rate)


def adam(diff, history, local_rate, p, iteration):
    m, v = history
    beta1, beta2 = p.momentum, p.momentum2
    t = iteration + 1
    correction = math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    m.mul_(beta1).add_(diff, alpha=1.0 - beta1)
    v.mul_(beta2).addcmul_(diff, diff, value=1.0 - beta2)
    # Caffe adds delta to sqrt(v) without bias correction; the correction scales the rate
    diff.copy_(m).div_(v.sqrt().add_(p.delta)).mul_(local_rate * correction)


UPDATE_RULES = {"SGD": sgd, "Nesterov": nesterov, "AdaGrad": adagrad, "RMSProp": rmsprop,
                "AdaDelta": adadelta, "Adam": adam}


def check_solver_param(p) -> None:
    """Caffe's fatal checks on the update-rule fields."""
    from caffeseg.engine.solvers.lr_policy import SolverConfigError
    kind = p.type
    if kind not in UPDATE_RULES:
        raise SolverConfigError(f"solver type '{kind}' is not one of {', '.join(SOLVER_TYPES)}")
    if kind in ("AdaGrad", "RMSProp") and p.momentum != 0:
        raise SolverConfigError(f"{kind} solver requires momentum 0 (got {p.momentum})")
    if kind == "RMSProp" and not 0 <= p.rms_decay < 1:
        raise SolverConfigError(f"RMSProp needs 0 <= rms_decay < 1 (got {p.rms_decay})")
    if p.regularization_type not in ("L1", "L2"):
        raise SolverConfigError(f"regularization_type '{p.regularization_type}' is not L1 or L2")
