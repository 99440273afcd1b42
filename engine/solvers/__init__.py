"""Caffe's solvers: learning-rate policies, update rules and the training loop."""
from caffeseg.engine.solvers.lr_policy import LearningRate, SolverConfigError
from caffeseg.engine.solvers.solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver, IterationInfo, NesterovSolver,
                                   RMSPropSolver, SGDSolver, Solver, TestResult, get_solver)

__all__ = ["LearningRate", "SolverConfigError", "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "IterationInfo", "TestResult", "get_solver"]
