"""pycaffe-style names for the solvers (the implementation lives in ``engine.solvers``)."""
from caffeseg.engine.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, IterationInfo, NesterovSolver,  # noqa: F401
                            RMSPropSolver, SGDSolver, Solver, SolverConfigError, TestResult, get_solver)
