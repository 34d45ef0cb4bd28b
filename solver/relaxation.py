"""Solve the LP relaxation of the placement model with Ipopt (cyipopt).

``backend="ipopt"`` (the default) is solver.fastlp: the LP built with numpy, lazy capacity rows, class
fixing and priced columns, given to cyipopt directly. The other two backends solve the Pyomo model
(solver.formulation, the reference definition): ``ipopt-pyomo`` compiles it in memory with Pyomo's
standard-form compiler and hands it to cyipopt's Problem API; ``ipopt-nl`` goes through Pyomo's own
``SolverFactory("cyipopt")`` (PyNumero + ASL). All three reach the same optimum.

For ``ipopt-pyomo``, large instances start from each class's ``CANDIDATES`` cheapest nodes; the left-out
columns are then priced with the LP duals (reduced cost = cost + dual of the class's assignment row +
capacity duals) and any column with negative reduced cost is added and the LP solved again, so the
restricted optimum is the full optimum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from solver.errors import SolverError, SolverUnavailableError
from solver.problem import FloatArray, Problem

if TYPE_CHECKING:
    from solver.formulation import Formulation

log = logging.getLogger(__name__)

CANDIDATES = 10
FULL_COLUMNS_LIMIT = 4000
MAX_PRICING_ROUNDS = 6
IPOPT_OPTIONS: dict[str, Any] = {
    "print_level": 0,
    "sb": "yes",
    "bound_relax_factor": 0.0,
    "hessian_constant": "yes",
    "jac_c_constant": "yes",
    "jac_d_constant": "yes",
    "mu_strategy": "adaptive",
    "tol": 1e-7,
    # Measured on the thesis's sizes: MUMPS's scaling and Ipopt's iterative refinement cost more than
    # they save on these well-scaled LPs (~25 % of the solve).
    "min_refinement_steps": 0,
    "linear_system_scaling": "none",
    "mumps_scaling": 0,
    "mumps_permuting_scaling": 0,
}


@dataclass(frozen=True)
class Relaxation:
    """The fractional optimum: y[c, j] requests of class c on node j, and Ipopt's report."""

    y: FloatArray
    objective: float
    status: str
    iterations: int
    pricing_rounds: int
    columns: int
    value: float  # the LP's objective, rejection penalty included
    rows: int | None = None  # constraint rows of the last LP solved (fast path)
    guided: bool = False  # fast path: columns chosen by the trusted price estimate
    estimate: str = ""  # fast path: the price estimate's method ("subgradient", "smoothed"; "" none)


def solve_relaxation(problem: Problem, backend: str = "ipopt") -> Relaxation:
    """The LP optimum over all (class, node) columns, by Ipopt.

    ``ipopt``: the numpy-built LP with lazy rows and columns (solver.fastlp); ``ipopt-pyomo``: the Pyomo
    model compiled to standard form; ``ipopt-nl``: the Pyomo model through Pyomo's own cyipopt interface.
    """
    p = problem
    if p.n_classes == 0:
        return Relaxation(np.zeros((0, p.n_nodes)), 0.0, "optimal", 0, 0, 0, 0.0)
    if backend == "ipopt":
        from solver.fastlp import solve_lp

        lp = solve_lp(p)
        objective = float((lp.y * p.cost).sum())
        return Relaxation(
            lp.y, objective, lp.status, lp.iterations, lp.rounds, lp.columns, lp.value, lp.rows, lp.guided, lp.estimate
        )
    from solver.formulation import build_model  # Pyomo: only for the reference-model backends

    columns = _initial_columns(p)
    rounds = 0
    while True:
        form = build_model(p, sorted(columns), integer=False)
        if backend == "ipopt-nl":
            values, duals, status, iters = _solve_nl(form)
        elif backend == "ipopt-pyomo":
            values, duals, status, iters = _solve_direct(form)
        else:
            raise ValueError(f"unknown Ipopt backend {backend!r}")
        if len(columns) == p.n_classes * p.n_nodes or rounds >= MAX_PRICING_ROUNDS or duals is None:
            break
        added = _price(p, form, duals, columns)
        if not added:
            break
        rounds += 1
        columns.update(added)
        log.debug("pricing round %d added %d columns", rounds, len(added))
    y = np.zeros((p.n_classes, p.n_nodes))
    for i, (c, j) in enumerate(form.columns):
        y[c, j] = values[i]
    objective = float((y * p.cost).sum())
    value = objective + form.penalty * (p.class_count.sum() - y.sum())
    return Relaxation(y, objective, status, iters, rounds, len(form.columns), value, None)


def _initial_columns(p: Problem) -> set[tuple[int, int]]:
    if p.n_classes * p.n_nodes <= FULL_COLUMNS_LIMIT or p.n_nodes <= CANDIDATES:
        return {(c, j) for c in range(p.n_classes) for j in range(p.n_nodes)}
    cheapest = np.argsort(p.cost, axis=1, kind="stable")[:, :CANDIDATES]
    return {(c, int(j)) for c in range(p.n_classes) for j in cheapest[c]}


def _price(p: Problem, form: Formulation, duals: dict[str, Any], have: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Left-out columns whose reduced cost is negative under the current duals."""
    assign = duals["assign"]
    link = duals["link"]
    mem_dual = duals["memory"]
    comp_dual = duals["compute"]
    linked = {jk: t for t, jk in enumerate(form.linked)}
    scale = max(1.0, float(p.cost.max()))
    capacity_price = mem_dual[:, None] * p.mem[None, :] + comp_dual[:, None] * p.comp[None, :]
    added = set()
    for c in range(p.n_classes):
        k = int(p.class_model[c])
        for j in range(p.n_nodes):
            if (c, j) in have:
                continue
            if (j, k) in linked:
                extra = link[linked[(j, k)]]
            elif p.free[j, k] > 0:
                extra = 0.0
            else:
                extra = capacity_price[j, k]
            if p.cost[c, j] + assign[c] + extra < -1e-6 * scale:
                added.add((c, j))
    return added


def _standard_form(form: Formulation) -> Any:
    from pyomo.repn.plugins.standard_form import LinearStandardFormCompiler

    return LinearStandardFormCompiler().write(form.model, mixed_form=True, set_sense=None)


class _LinearProgram:
    """cyipopt callbacks for min c'x s.t. cl <= Ax <= cu: constant Jacobian, zero Hessian."""

    def __init__(self, c: FloatArray, a: Any) -> None:
        coo = a.tocoo()
        self.c = c
        self.a = a.tocsr()
        self.rows, self.cols, self.vals = coo.row, coo.col, coo.data
        self.iterations = 0

    def intermediate(self, *args: Any) -> bool:
        self.iterations += 1
        return True

    def objective(self, x: FloatArray) -> float:
        return float(self.c @ x)

    def gradient(self, x: FloatArray) -> FloatArray:
        return self.c

    def constraints(self, x: FloatArray) -> FloatArray:
        return np.asarray(self.a @ x)

    def jacobian(self, x: FloatArray) -> FloatArray:
        return np.asarray(self.vals)

    def jacobianstructure(self) -> tuple[Any, Any]:
        return self.rows, self.cols

    def hessianstructure(self) -> tuple[Any, Any]:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)

    def hessian(self, x: FloatArray, lagrange: FloatArray, obj_factor: float) -> FloatArray:
        return np.zeros(0)


def _solve_direct(form: Formulation) -> tuple[FloatArray, dict[str, Any] | None, str, int]:
    try:
        import cyipopt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SolverUnavailableError("Ipopt (python package cyipopt-wheels)") from exc
    import scipy.sparse as sp

    sf = _standard_form(form)
    a = sp.csr_matrix(sf.A)
    n = a.shape[1]
    c = np.asarray(sf.c.toarray()).ravel() if sp.issparse(sf.c) else np.asarray(sf.c, dtype=float).ravel()
    bound = np.array([row.bound_type for row in sf.rows])
    rhs = np.asarray(sf.rhs, dtype=float)
    cl = np.where(bound == 1, -np.inf, rhs)
    cu = np.where(bound == -1, np.inf, rhs)
    lb = np.array([v.lb if v.lb is not None else -np.inf for v in sf.columns], dtype=float)
    ub = np.array([v.ub if v.ub is not None else np.inf for v in sf.columns], dtype=float)
    program = _LinearProgram(c, a)
    nlp = cyipopt.Problem(n=n, m=a.shape[0], problem_obj=program, lb=lb, ub=ub, cl=cl, cu=cu)
    for key, value in IPOPT_OPTIONS.items():
        nlp.add_option(key, value)
    x0 = np.clip(np.minimum(ub, 1.0) / 2, lb, ub)
    x, info = nlp.solve(x0)
    status = ipopt_status(int(info["status"]))
    position = {id(v): i for i, v in enumerate(sf.columns)}
    values = np.array(
        [x[position[id(form.model.y[i])]] if id(form.model.y[i]) in position else 0.0 for i in range(len(form.columns))]
    )
    n_nodes = form.n_nodes
    duals = _row_duals(form, sf.rows, np.asarray(info["mult_g"]), n_nodes) if status == "optimal" else None
    return values, duals, status, program.iterations


def _row_duals(form: Formulation, rows: Any, mult: FloatArray, n_nodes: int) -> dict[str, Any]:
    m = form.model
    out = {
        "assign": np.zeros(len(m.assign)),
        "link": np.zeros(len(form.linked)),
        "memory": np.zeros(n_nodes),
        "compute": np.zeros(n_nodes),
    }
    for row, value in zip(rows, mult, strict=True):
        con = row.constraint
        name = con.parent_component().local_name
        if name in out:
            out[name][con.index()] += value
    return out


def _solve_nl(form: Formulation) -> tuple[FloatArray, dict[str, Any] | None, str, int]:
    import pyomo.environ as pyo

    solver = pyo.SolverFactory("cyipopt")
    if not solver.available(exception_flag=False):
        raise SolverUnavailableError("Ipopt through Pyomo/PyNumero (cyipopt + pynumero ASL library)")
    result = solver.solve(form.model, options=dict(IPOPT_OPTIONS))
    tc = str(result.solver.termination_condition)
    status = "optimal" if tc == "optimal" else tc
    values = np.array([pyo.value(form.model.y[i]) for i in range(len(form.columns))], dtype=float)
    return values, None, status, 0


def ipopt_status(code: int) -> str:
    """Ipopt's return code as a plan status; raises SolverError on a failure."""
    if code in (0, 1):
        return "optimal"
    if code == 2:
        return "infeasible"
    if code in (-1, -4):
        return "iteration_limit"
    if code < 0:
        raise SolverError(f"Ipopt failed with status {code}")
    return f"ipopt_status_{code}"
