"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``).

``iter`` is the number of updates already applied: Caffe computes the rate at the top of
``ApplyUpdate``, before ``iter`` is incremented. ``multistep`` is stateful (``current_step``,
saved in the SolverState), so the policy is an object, not a pure function.
"""
from __future__ import annotations

import math


class SolverConfigError(ValueError):
    """A solver parameter breaks one of Caffe's rules; the message names the field."""


_NEEDS_GAMMA = ("step", "exp", "inv", "multistep", "sigmoid")
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class LearningRate:
    """Computes the rate for an iteration exactly like Caffe, including multistep's counter."""

    def __init__(self, solver_param):
        self.p = solver_param
        self.policy = solver_param.lr_policy
        if self.policy not in POLICIES:
            raise SolverConfigError(
                f"lr_policy '{self.policy}' is not one of {', '.join(POLICIES)}"
                + (" (the field is required)" if not self.policy else ""))
        if self.policy in _NEEDS_GAMMA and solver_param.gamma < 0:
            raise SolverConfigError(f"lr_policy '{self.policy}' needs gamma >= 0 (got {solver_param.gamma})")
        if self.policy in ("step", "sigmoid") and solver_param.stepsize <= 0:
            raise SolverConfigError(f"lr_policy '{self.policy}' needs stepsize > 0")
        if self.policy == "poly" and solver_param.max_iter <= 0:
            raise SolverConfigError("lr_policy 'poly' needs max_iter > 0")
        #: multistep position; Caffe stores it in SolverState.current_step
        self.current_step = 0

    def rate(self, iteration: int) -> float:
        """The rate for the update that follows ``iteration`` completed updates.

        Caffe computes in double precision and hands the result to float math; we keep the
        double here and let the update rules cast it.
        """
        p = self.p
        base = float(p.base_lr)
        if self.policy == "fixed":
            return base
        if self.policy == "step":
            self.current_step = iteration // p.stepsize
            return base * math.pow(p.gamma, self.current_step)
        if self.policy == "exp":
            return base * math.pow(p.gamma, iteration)
        if self.policy == "inv":
            return base * math.pow(1.0 + p.gamma * iteration, -p.power)
        if self.policy == "multistep":
            # At most one step per call, exactly like Caffe (the counter is saved in snapshots).
            if self.current_step < len(p.stepvalue) and iteration >= p.stepvalue[self.current_step]:
                self.current_step += 1
            return base * math.pow(p.gamma, self.current_step)
        if self.policy == "poly":
            return base * math.pow(1.0 - float(iteration) / float(p.max_iter), p.power)
        # sigmoid
        return base * (1.0 / (1.0 + math.exp(-p.gamma * (float(iteration) - float(p.stepsize)))))
