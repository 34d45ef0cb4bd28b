"""The placement LP built with numpy and solved by Ipopt (cyipopt) directly: lazy rows, lazy columns.

The same LP as ``solver.formulation.build_model(..., integer=False)`` (the reference definition, and the
oracle of the property test): y[c, j] requests of class c on node j, r[c] rejected, new[j, k] new
instances where running ones can be reused, every request placed or rejected, memory and compute of
every node. At the optimum only a few capacity rows bind, so the LP is grown until it proves optimality:

1. Rows: start with the nodes that would be overloaded (or nearly full) if every class sat on its
   cheapest node. Only nodes with a row constrain the LP.
2. Class fixing: a class whose cheapest node has no row sits there whole (nothing can make another node
   cheaper for it), so it leaves the LP.
3. Columns: every other class gets the ``GUIDED`` nodes of least reduced cost under capacity prices
   estimated in numpy (solver.lpguide), those within ``WINDOW`` of them, its cheapest node and the
   nodes the estimate's greedy placed it on. Where the estimate's bounds are more than ``TRUST_GAP``
   apart (the cluster is nearly or wholly full) it gets its ``CANDIDATES`` cheapest nodes instead (on
   small LPs one more for each the greedy load nearly fills).
4. Rejection columns: none where the estimate's greedy placed every request (its placement is in the
   LP, so the LP is feasible without them); otherwise one per class.
5. Solve; a node without a row that the result overloads gets its rows (unfixing its classes) and the LP
   is solved again. Then left-out columns are priced with the duals (reduced cost = cost + dual of the
   class's assignment row + capacity or link duals; penalty + assignment dual for a left-out r); any
   with negative reduced cost is added, repeat.

When no row is violated and no column prices out, the restricted optimum is feasible for the full LP and
dual feasible for it, hence the full LP's optimum. After ``MAX_ROUNDS`` (or a failed solve) the full LP
(all rows and columns) is solved instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from solver.errors import SolverUnavailableError
from solver.lpguide import Guide, estimate
from solver.problem import FloatArray, IntArray, Problem, rejection_penalty

log = logging.getLogger(__name__)

CANDIDATES = 5
GUIDED = 2  # columns per class by estimated reduced cost, when the estimate is trusted
WINDOW = 0.5  # ... and those within this many typical cost gaps (cheapest to second) of the least
TRUST_GAP = 0.05  # the estimate is trusted when its bounds are this close (relative); at 1,000 x 100 bounds
# 2-5 % apart are common, and the plain candidates there cost pricing rounds of thousands of columns
SMALL_STEPS = 20  # subgradient steps on small LPs (up to WIDEN_LIMIT pairs); solver.lpguide.STEPS above
USE_GUIDE = True
LAZY_REJECTION = True  # rejection columns only where priced in, when the guide's greedy placed everything
WIDEN_LIMIT = 1000  # class x node pairs up to which congested classes get wider candidate lists
MAX_ROUNDS = 8
PRICE_PER_CLASS = 3  # columns a class may gain per pricing round (its most negative reduced costs); 0: all
CLOSE_ROWS = True
NEARLY_FULL = 0.9  # initial rows: nodes whose greedy load reaches this share of a budget
BoolArray = Any

IPOPT_FAST: dict[str, Any] = {
    "print_level": 0,
    "sb": "yes",
    "bound_relax_factor": 0.0,
    "hessian_constant": "yes",
    "jac_c_constant": "yes",
    "jac_d_constant": "yes",
    "mehrotra_algorithm": "yes",
    "tol": 1e-8,
    "min_refinement_steps": 0,
    "linear_system_scaling": "none",
    "mumps_scaling": 0,
    "mumps_permuting_scaling": 0,
}
# The fallback's options: Ipopt's default (monotone-safe) adaptive barrier, no Mehrotra predictor-corrector.
IPOPT_SAFE: dict[str, Any] = {k: v for k, v in IPOPT_FAST.items() if k != "mehrotra_algorithm"} | {
    "mu_strategy": "adaptive"
}


@dataclass(frozen=True)
class LpSolution:
    """The full LP's optimum: y [c, j], r [c], its value (penalty included) and how it was found."""

    y: FloatArray
    r: FloatArray
    value: float
    status: str
    iterations: int
    rounds: int
    columns: int
    rows: int
    fallback: bool
    guided: bool = False  # columns chosen by the trusted price estimate (solver.lpguide)
    estimate: str = ""  # the price estimate's method (solver.lpguide.Guide.method), "" when none ran


@dataclass
class _Lp:
    """One restricted LP in Ipopt's form and the index maps needed to read it back."""

    cost: FloatArray
    rows: IntArray
    cols: IntArray
    vals: FloatArray
    lb: FloatArray
    ub: FloatArray
    cl: FloatArray
    cu: FloatArray
    col_class: IntArray  # [y] class of each y variable
    col_node: IntArray  # [y] node of each y variable
    classes: IntArray  # the classes in the LP, in assignment-row order
    r_classes: IntArray  # [r] the classes with a rejection column
    link_keys: IntArray  # [t] j * n_models + k of each `new` variable / link row
    cap_nodes: IntArray  # nodes with capacity rows (memory rows, then compute rows)
    mem_row: IntArray  # [len(cap_nodes)] row index or -1 when the row is empty
    comp_row: IntArray


def solve_lp(p: Problem) -> LpSolution:
    """The optimum of the placement LP over all columns and rows, by Ipopt on a restricted LP."""
    penalty = rejection_penalty(p)
    n_c, n_j = p.n_classes, p.n_nodes
    if n_c == 0 or n_j == 0:
        r = p.class_count.astype(float)
        return LpSolution(np.zeros((n_c, n_j)), r, penalty * float(r.sum()), "optimal", 0, 0, 0, 0, False)
    cheapest = np.argmin(p.cost, axis=1) if n_j else np.zeros(n_c, dtype=np.int64)
    congested = _initial_rows(p, cheapest)
    has_row = congested.copy()
    in_lp = np.zeros((n_c, n_j), dtype=bool)
    guide, method = _guide(p, penalty, has_row, cheapest)
    # where the guide's greedy placed every request, its columns are in the LP: feasible without r
    with_r = np.full(n_c, guide is None or guide.placed is None or not LAZY_REJECTION)
    total_iters = 0
    for rounds in range(MAX_ROUNDS):
        free_class = _close_rows(p, has_row, in_lp, cheapest, congested, guide)
        lp = _build(p, in_lp & free_class[:, None], free_class, has_row, penalty, with_r)
        x, mult, status, iters = _ipopt(lp, IPOPT_FAST)
        total_iters += iters
        if status != "optimal":
            if with_r.all():
                break
            with_r[:] = True  # not expected (the greedy's placement is feasible): solve with every r
            continue
        y, r = _expand(p, lp, x, cheapest, free_class)
        overloaded = _overloaded(p, y) & ~has_row
        if overloaded.any():
            has_row |= overloaded
            continue
        priced = _price(p, lp, mult, in_lp, free_class, has_row)
        rejectable = _price_rejection(p, lp, mult, with_r, penalty)
        if not priced.any() and not rejectable.any():
            value = float((p.cost * y).sum() + penalty * r.sum())
            columns = int(in_lp[free_class].sum())
            guided = guide is not None
            return LpSolution(y, r, value, status, total_iters, rounds, columns, len(lp.cl), False, guided, method)
        in_lp |= priced
        with_r |= rejectable
    return replace(_full(p, penalty, total_iters), estimate=method)


def tune_allocator() -> bool:
    """Keep freed memory in this process's heap (glibc); for long-lived solver processes. True if applied.

    Ipopt and MUMPS allocate and free their work arrays at every iteration; with glibc's defaults large
    blocks are mapped and unmapped each time and every page faults again (~6 % of a solve). Raising the
    mmap and trim thresholds keeps them in the heap; the price is that the process keeps its peak heap.
    """
    import ctypes

    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    try:
        libc = ctypes.CDLL(None)
        return all(
            libc.mallopt(option, value) == 1
            for option, value in ((m_trim_threshold, 512 << 20), (m_top_pad, 64 << 20), (m_mmap_threshold, 256 << 20))
        )
    except (OSError, AttributeError):  # not glibc
        return False


def tune_solver_process() -> None:
    """Set up a process that solves placements: glibc's heap kept (``tune_allocator``), BLAS on one thread.

    The solver's matrices are small (the smoothed dual's Newton steps, Ipopt's MUMPS): extra BLAS threads
    only spin against the model servers on a busy board. On a loaded 2-core machine one LP estimate took
    13.8 s with OpenBLAS's default threads and 0.05 s with one. Applies to this process only (the model
    servers an agent starts keep their own threads).
    """
    from threadpoolctl import threadpool_limits

    tune_allocator()
    threadpool_limits(limits=1)


def full_lp(p: Problem) -> dict[str, Any]:
    """The whole LP (every row and column) as arrays, for other LP solvers: min cost'x, cl <= Ax <= cu.

    Keys: cost, rows, cols, vals (A in coordinate form), lb, ub, cl, cu.
    """
    ones = np.ones(p.n_nodes, dtype=bool)
    lp = _build(
        p, np.ones((p.n_classes, p.n_nodes), dtype=bool), np.ones(p.n_classes, dtype=bool), ones, rejection_penalty(p)
    )
    return {key: getattr(lp, key) for key in ("cost", "rows", "cols", "vals", "lb", "ub", "cl", "cu")}


def _full(p: Problem, penalty: float, iterations: int) -> LpSolution:
    """The fallback: every row and every column, Ipopt's safe options."""
    everything = np.ones(p.n_nodes, dtype=bool)
    classes = np.ones(p.n_classes, dtype=bool)
    lp = _build(p, np.ones((p.n_classes, p.n_nodes), dtype=bool), classes, everything, penalty)
    x, _mult, status, iters = _ipopt(lp, IPOPT_SAFE)
    y, r = _expand(p, lp, x, np.zeros(p.n_classes, dtype=np.int64), classes)
    value = float((p.cost * y).sum() + penalty * r.sum())
    log.debug("lazy LP gave up; full LP solved (%s)", status)
    return LpSolution(y, r, value, status, iterations + iters, MAX_ROUNDS, y.size, len(lp.cl), True)


def _initial_rows(p: Problem, cheapest: IntArray) -> BoolArray:
    """Nodes whose capacity would be (nearly) used up with every class on its cheapest node."""
    y = np.zeros((p.n_classes, p.n_nodes))
    y[np.arange(p.n_classes), cheapest] = p.class_count
    mem_use, comp_use = _usage(p, y)
    return np.asarray(
        (mem_use > NEARLY_FULL * p.mem_budget - 1e-9) & (mem_use > 0)
        | (comp_use > NEARLY_FULL * p.comp_budget - 1e-9) & (comp_use > 0)
    )


def _usage(p: Problem, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    """[j] memory and compute the new instances of placement ``y`` take."""
    load = y.T @ np.eye(len(p.mem))[p.class_model]  # [j, k] requests of model k on node j
    new = np.maximum(load - p.free, 0.0)
    return new @ p.mem, new @ p.comp


def _overloaded(p: Problem, y: FloatArray) -> BoolArray:
    mem_use, comp_use = _usage(p, y)
    tol_m = 1e-7 * np.maximum(1.0, p.mem_budget)
    tol_c = 1e-7 * np.maximum(1.0, p.comp_budget)
    return np.asarray((mem_use > p.mem_budget + tol_m) | (comp_use > p.comp_budget + tol_c))


def _guide(p: Problem, penalty: float, has_row: BoolArray, cheapest: IntArray) -> tuple[Guide | None, str]:
    """Estimated capacity prices to choose columns with (None where not needed or trusted), and their method."""
    if not USE_GUIDE or not has_row[cheapest].any() or p.n_nodes <= GUIDED:
        return None, ""
    small = p.n_classes * p.n_nodes <= WIDEN_LIMIT
    guide = estimate(p, penalty, steps=SMALL_STEPS if small else None)
    log.debug("%s price estimate: bounds %.6g..%.6g (gap %.2g)", guide.method, guide.lower, guide.upper, guide.gap)
    return (guide if guide.gap <= TRUST_GAP else None), guide.method


def _close_rows(
    p: Problem,
    has_row: BoolArray,
    in_lp: BoolArray,
    cheapest: IntArray,
    congested: BoolArray,
    guide: Guide | None = None,
) -> BoolArray:
    """Add rows until no node without one could be overloaded by the LP; the classes left in the LP.

    A node's worst case is every class with a column there (and every fixed class whose cheapest node it
    is) sitting there whole; a node whose worst case fits needs no row, the LP cannot overload it.
    """
    while True:
        free_class = has_row[cheapest]
        _ensure_candidates(p, in_lp, free_class, congested, guide)
        worst = in_lp * free_class[:, None] * p.class_count[:, None].astype(float)
        fixed = np.nonzero(~free_class)[0]
        worst[fixed, cheapest[fixed]] = p.class_count[fixed]
        grow = _overloaded(p, worst) & ~has_row
        if not grow.any() or not CLOSE_ROWS:
            return free_class
        has_row |= grow


def _ensure_candidates(
    p: Problem, in_lp: BoolArray, free_class: BoolArray, congested: BoolArray, guide: Guide | None = None
) -> None:
    """Give every class in the LP that has no columns yet its candidate nodes.

    With a trusted ``guide``: its ``GUIDED`` nodes of least estimated reduced cost, any within
    ``WINDOW`` typical cost gaps of the least, and its cheapest node. Without: its cheapest
    ``CANDIDATES`` nodes; on a small LP also one more node per congested node among those (one the
    greedy load nearly fills): crowded out of its cheapest nodes it needs the next ones, and finding
    them by pricing costs a second solve, more than the extra columns cost there.
    """
    need = np.nonzero(free_class & ~in_lp.any(axis=1))[0]
    if not len(need):
        return
    if guide is not None:
        in_lp[need] |= _guided_columns(p, guide, need)
        return
    k = min(CANDIDATES, p.n_nodes)
    order = np.argsort(p.cost[need], axis=1, kind="stable")
    width = np.full(len(need), k)
    if p.n_classes * p.n_nodes <= WIDEN_LIMIT:
        width = np.minimum(k + congested[order[:, :k]].sum(axis=1), p.n_nodes)
    take = np.arange(p.n_nodes)[None, :] < width[:, None]
    in_lp[np.repeat(need, take.sum(axis=1)), order[take]] = True


def _guided_columns(p: Problem, guide: Guide, need: IntArray) -> BoolArray:
    """[len(need), j] the columns a trusted price estimate points to (see ``_ensure_candidates``)."""
    reduced = guide.reduced[need]
    rows = np.arange(len(need))
    take = np.zeros(reduced.shape, dtype=bool)
    order = np.argsort(reduced, axis=1, kind="stable")[:, :GUIDED]
    take[np.repeat(rows, order.shape[1]), order.ravel()] = True
    ranked = np.sort(p.cost, axis=1)
    typical_gap = float(np.median(ranked[:, 1] - ranked[:, 0]))
    take |= reduced <= reduced.min(axis=1, keepdims=True) + WINDOW * typical_gap
    take[rows, np.argmin(p.cost[need], axis=1)] = True
    if guide.placed is not None:
        take |= guide.placed[need]
    return take


@dataclass
class _Layout:
    """Where each variable and row of a restricted LP sits (y, r, new; assign, link, memory, compute)."""

    cc: IntArray  # [y] class
    jj: IntArray  # [y] node
    kk: IntArray  # [y] model
    classes: IntArray  # classes in the LP (assignment rows)
    r_pos: IntArray  # [r] assignment rows whose class has a rejection column
    class_pos: IntArray  # [c] assignment row of class c, or -1
    linked_col: BoolArray  # [y] the column counts against a link row (reuse at a node with rows)
    link_keys: IntArray  # [t] j * n_models + k
    link_of_col: IntArray  # [linked y] its link row
    cap_nodes: IntArray  # nodes with capacity rows
    cap_pos: IntArray  # [j] position among cap_nodes, or -1

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """(y, assignment rows, new, capacity nodes)."""
        return len(self.cc), len(self.classes), len(self.link_keys), len(self.cap_nodes)


def _layout(p: Problem, cols: BoolArray, classes_mask: BoolArray, has_row: BoolArray, with_r: BoolArray) -> _Layout:
    n_models = len(p.mem)
    classes = np.nonzero(classes_mask)[0]
    r_pos = np.nonzero(with_r[classes])[0]
    class_pos = np.full(p.n_classes, -1, dtype=np.int64)
    class_pos[classes] = np.arange(len(classes))
    cc, jj = np.nonzero(cols)
    kk = p.class_model[cc]
    linked_col = has_row[jj] & (p.free[jj, kk] > 0)
    link_keys, link_of_col = np.unique((jj * n_models + kk)[linked_col], return_inverse=True)
    cap_nodes = np.nonzero(has_row)[0]
    cap_pos = np.full(p.n_nodes, -1, dtype=np.int64)
    cap_pos[cap_nodes] = np.arange(len(cap_nodes))
    return _Layout(
        cc, jj, kk, classes, r_pos, class_pos, linked_col, link_keys, link_of_col.ravel(), cap_nodes, cap_pos
    )


def _entries(p: Problem, lay: _Layout, has_row: BoolArray) -> tuple[IntArray, IntArray, FloatArray]:
    """A's nonzeros (row, column, value) before empty rows are dropped; rows: assign, link, memory, compute."""
    n_y, n_r, n_t, n_cap = lay.sizes
    n_models = len(p.mem)
    t_node, t_model = lay.link_keys // n_models, lay.link_keys % n_models
    n_rr = len(lay.r_pos)
    y_idx, r_idx, t_idx = np.arange(n_y), n_y + np.arange(n_rr), n_y + n_rr + np.arange(n_t)
    link0, mem0, comp0 = n_r, n_r + n_t, n_r + n_t + n_cap
    rows = [lay.class_pos[lay.cc], lay.r_pos]  # assign: sum y + r = count
    cols = [y_idx, r_idx]
    vals = [np.ones(n_y), np.ones(n_rr)]
    rows += [link0 + lay.link_of_col, link0 + np.arange(n_t)]  # link: sum y - new <= free
    cols += [y_idx[lay.linked_col], t_idx]
    vals += [np.ones(int(lay.linked_col.sum())), -np.ones(n_t)]
    plain = has_row[lay.jj] & ~lay.linked_col  # capacity: plain y where no reuse, `new` where reuse
    for base, weight in ((mem0, p.mem), (comp0, p.comp)):
        rows += [base + lay.cap_pos[lay.jj[plain]], base + lay.cap_pos[t_node]]
        cols += [y_idx[plain], t_idx]
        vals += [weight[lay.kk[plain]], weight[t_model]]
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = v != 0
    return r[keep], c[keep], v[keep]


def _build(
    p: Problem,
    cols: BoolArray,
    classes_mask: BoolArray,
    has_row: BoolArray,
    penalty: float,
    with_r: BoolArray | None = None,
) -> _Lp:
    """The restricted LP: y over ``cols``, r over the LP's classes ``with_r`` (all), new where reuse meets a row."""
    lay = _layout(p, cols, classes_mask, has_row, np.ones(p.n_classes, dtype=bool) if with_r is None else with_r)
    n_y, n_r, n_t, n_cap = lay.sizes
    rows, cols_, vals = _entries(p, lay, has_row)
    mem0, comp0 = n_r + n_t, n_r + n_t + n_cap
    used = np.zeros(comp0 + n_cap, dtype=bool)  # capacity rows with no entries are dropped
    used[rows] = True
    used[:mem0] = True
    renum = np.cumsum(used) - 1
    counts = p.class_count[lay.classes].astype(float)
    t_node, t_model = lay.link_keys // len(p.mem), lay.link_keys % len(p.mem)
    return _Lp(
        cost=np.concatenate([p.cost[lay.cc, lay.jj], np.full(len(lay.r_pos), penalty), np.zeros(n_t)]),
        rows=renum[rows],
        cols=cols_,
        vals=vals,
        lb=np.zeros(n_y + len(lay.r_pos) + n_t),
        ub=np.concatenate([p.class_count[lay.cc].astype(float), counts[lay.r_pos], np.full(n_t, np.inf)]),
        cl=np.concatenate([counts, np.full(n_t + 2 * n_cap, -np.inf)])[used],
        cu=np.concatenate(
            [counts, p.free[t_node, t_model].astype(float), p.mem_budget[lay.cap_nodes], p.comp_budget[lay.cap_nodes]]
        )[used],
        col_class=lay.cc,
        col_node=lay.jj,
        classes=lay.classes,
        r_classes=lay.classes[lay.r_pos],
        link_keys=lay.link_keys,
        cap_nodes=lay.cap_nodes,
        mem_row=np.where(used[mem0:comp0], renum[mem0:comp0], -1),
        comp_row=np.where(used[comp0:], renum[comp0:], -1),
    )


class _Callbacks:
    """cyipopt callbacks for min c'x s.t. cl <= Ax <= cu: constant Jacobian, zero Hessian."""

    def __init__(self, lp: _Lp) -> None:
        self.lp = lp
        self.m = len(lp.cl)
        self.iterations = 0
        self._empty = np.zeros(0, dtype=np.int64)

    def intermediate(self, *args: Any) -> bool:
        self.iterations += 1
        return True

    def objective(self, x: FloatArray) -> float:
        return float(self.lp.cost @ x)

    def gradient(self, x: FloatArray) -> FloatArray:
        return self.lp.cost

    def constraints(self, x: FloatArray) -> FloatArray:
        lp = self.lp
        out: FloatArray = np.bincount(lp.rows, weights=lp.vals * x[lp.cols], minlength=self.m).astype(np.float64)
        return out

    def jacobian(self, x: FloatArray) -> FloatArray:
        return self.lp.vals

    def jacobianstructure(self) -> tuple[IntArray, IntArray]:
        return self.lp.rows, self.lp.cols

    def hessianstructure(self) -> tuple[IntArray, IntArray]:
        return self._empty, self._empty

    def hessian(self, x: FloatArray, lagrange: FloatArray, obj_factor: float) -> FloatArray:
        return np.zeros(0)


def _ipopt(lp: _Lp, options: dict[str, Any]) -> tuple[FloatArray, FloatArray, str, int]:
    """Solve ``lp``: primal x, row multipliers (Ipopt's sign: L = c'x + mult'(Ax)), status, iterations."""
    try:
        import cyipopt
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SolverUnavailableError("Ipopt (python package cyipopt-wheels)") from exc
    from solver.relaxation import ipopt_status

    n = len(lp.cost)
    if n == 0:
        return np.zeros(0), np.zeros(len(lp.cl)), "optimal", 0
    callbacks = _Callbacks(lp)
    nlp = cyipopt.Problem(n=n, m=len(lp.cl), problem_obj=callbacks, lb=lp.lb, ub=lp.ub, cl=lp.cl, cu=lp.cu)
    for key, value in options.items():
        nlp.add_option(key, value)
    x0 = np.minimum(lp.ub, 1.0) / 2
    x, info = nlp.solve(x0)
    return np.asarray(x), np.asarray(info["mult_g"]), ipopt_status(int(info["status"])), callbacks.iterations


def _expand(
    p: Problem, lp: _Lp, x: FloatArray, cheapest: IntArray, free_class: BoolArray
) -> tuple[FloatArray, FloatArray]:
    """The full y [c, j] and r [c]: the LP's values, fixed classes whole on their cheapest node."""
    y = np.zeros((p.n_classes, p.n_nodes))
    n_y = len(lp.col_class)
    y[lp.col_class, lp.col_node] = np.clip(x[:n_y], 0.0, None)
    fixed = np.nonzero(~free_class)[0]
    y[fixed, cheapest[fixed]] = p.class_count[fixed]
    r = np.zeros(p.n_classes)
    r[lp.r_classes] = np.clip(x[n_y : n_y + len(lp.r_classes)], 0.0, None)
    return y, r


def _price(
    p: Problem, lp: _Lp, mult: FloatArray, in_lp: BoolArray, free_class: BoolArray, has_row: BoolArray
) -> BoolArray:
    """Left-out columns of the LP's classes whose reduced cost under the duals is negative."""
    n_models = len(p.mem)
    n_r, n_t = len(lp.classes), len(lp.link_keys)
    assign = np.zeros(p.n_classes)
    assign[lp.classes] = mult[:n_r]
    # extra[j, k]: what one more request of model k on node j pays in capacity (or link) duals
    mem_dual = np.zeros(p.n_nodes)
    comp_dual = np.zeros(p.n_nodes)
    mem_dual[lp.cap_nodes] = np.where(lp.mem_row >= 0, mult[np.maximum(lp.mem_row, 0)], 0.0)
    comp_dual[lp.cap_nodes] = np.where(lp.comp_row >= 0, mult[np.maximum(lp.comp_row, 0)], 0.0)
    extra = mem_dual[:, None] * p.mem[None, :] + comp_dual[:, None] * p.comp[None, :]
    extra[(p.free > 0) & has_row[:, None]] = 0.0  # a new link row starts with a zero dual
    link = mult[n_r : n_r + n_t]
    extra[lp.link_keys // n_models, lp.link_keys % n_models] = link
    reduced = p.cost + assign[:, None] + extra[:, p.class_model].T
    scale = max(1.0, float(p.cost.max(initial=0.0)))
    negative = (reduced < -1e-7 * scale) & ~in_lp & free_class[:, None]
    if PRICE_PER_CLASS and p.n_nodes > PRICE_PER_CLASS:  # the most negative few a class: no blow-up of the LP
        masked = np.where(negative, reduced, np.inf)
        keep = np.argpartition(masked, PRICE_PER_CLASS - 1, axis=1)[:, :PRICE_PER_CLASS]
        best = np.zeros_like(negative)
        np.put_along_axis(best, keep, True, axis=1)
        negative &= best
    return np.asarray(negative)


def _price_rejection(p: Problem, lp: _Lp, mult: FloatArray, with_r: BoolArray, penalty: float) -> BoolArray:
    """[c] classes in the LP without a rejection column whose column prices in (penalty + assign dual < 0)."""
    assign = np.zeros(p.n_classes)
    assign[lp.classes] = mult[: len(lp.classes)]
    in_lp = np.zeros(p.n_classes, dtype=bool)
    in_lp[lp.classes] = True
    scale = max(1.0, float(p.cost.max(initial=0.0)))
    return np.asarray(in_lp & ~with_r & (penalty + assign < -1e-7 * scale))
