"""The exact optimum of the placement model by MILP (HiGHS through Pyomo's appsi interface)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver.errors import SolverError, SolverUnavailableError
from solver.formulation import build_model
from solver.problem import IntArray, Problem

TIME_LIMIT_S = 60.0


@dataclass(frozen=True)
class MilpResult:
    counts: IntArray  # [c, j]
    rejected: IntArray  # [c]
    status: str


def solve_milp(problem: Problem, time_limit_s: float = TIME_LIMIT_S) -> MilpResult:
    """Integer counts per (class, node) minimising the thesis objective exactly."""
    import pyomo.environ as pyo
    from pyomo.contrib.appsi.solvers.highs import Highs

    p = problem
    if p.n_classes == 0:
        empty = np.zeros((0, p.n_nodes), dtype=np.int64)
        return MilpResult(empty, np.zeros(0, dtype=np.int64), "optimal")
    columns = [(c, j) for c in range(p.n_classes) for j in range(p.n_nodes)]
    form = build_model(p, columns, integer=True)
    solver = Highs()
    if not solver.available():
        raise SolverUnavailableError("HiGHS (python package highspy)")
    solver.config.time_limit = time_limit_s
    solver.config.load_solution = False
    solver.highs_options = {"mip_rel_gap": 1e-9, "threads": 1}
    result = solver.solve(form.model)
    tc = str(result.termination_condition).rsplit(".", 1)[-1]
    if result.best_feasible_objective is None:
        raise SolverError(f"HiGHS found no integer solution ({tc})")
    result.solution_loader.load_vars()
    counts = np.zeros((p.n_classes, p.n_nodes), dtype=np.int64)
    for i, (c, j) in enumerate(columns):
        counts[c, j] = round(float(pyo.value(form.model.y[i])))
    rejected = np.array([round(float(pyo.value(form.model.r[c]))) for c in range(p.n_classes)], dtype=np.int64)
    status = "optimal" if tc == "optimal" else tc
    return MilpResult(counts, rejected, status)
