"""R(S) of ``solver.queue_fast`` by Ipopt, warm-started from the proven column generation (issue 16 item 5).

``solver.queue_dual`` proves R(S)'s optimum by column generation over pool loads (HiGHS), but the
relaxation is Ipopt's to solve (issue 16 item 1). Ipopt from a cold start needs 30-60 iterations on these
problems; from that optimum it needs a handful. So:

1. Columns: the allowed (stream, node) columns that carry rate at the LP's optimum, those whose LP
   reduced cost is within ``REDUCED_TOL`` of zero (they may carry rate in the NLP's optimum), and per pool
   without rate the column that gains most from the N_MIN instance every pool keeps in the NLP (a "sliver"
   of ~1e-6 req/s at no instance cost, which the reference NLP's optimum carries: ``SLIVERS``).
2. Ipopt solves the compact restricted NLP (``solver.queue_model.solve_warm``) from the LP's point (each
   sliver at the load where its marginal wait meets its gain), with
   multipliers from the LP's row prices where they map (assignment, pool balance, memory, compute, link and
   core rows; throughput rows and bound multipliers from the stationarity of the Lagrangian at that point),
   ``warm_start_init_point`` and a small ``mu_init`` (``WARM_OPTIONS``).
3. Every allowed column left out is priced with Ipopt's multipliers exactly as ``solver.queue_lazy`` does:
   none with a negative reduced cost -> the restricted optimum satisfies R(S)'s KKT conditions (convex: its
   optimum). Otherwise those columns join and Ipopt solves again, warm from its own point, at most
   ``MAX_ROUNDS`` times.

With ``POLISH`` (the default, session 18) Ipopt's first solve stops after ``POLISH_ITER`` iterations: where the
column generation's Lagrangian bound at the NLP's own budgets puts that point within ``POLISH_GAP`` of R(S)'s
optimum (weak duality: whatever Ipopt's multipliers) and the point keeps every row, it is the answer and step 3 is
not needed; else Ipopt goes on from it to its KKT point as above.

The answer is Ipopt's point. Where anything fails (the LP gives no proof, Ipopt is not optimal, a column
still prices out after ``MAX_ROUNDS``) the caller's path (``solver.queue_lazy``) solves R(S) instead.
``ENABLED`` switches this path; ``PRICE`` (switched off only to show the property tests failing) the
pricing of step 3.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from solver.errors import SolverError, SolverUnavailableError
from solver.problem import FloatArray, IntArray
from solver.queue_dual import Proof, bound_and_loads, nlp_budgets, prove_lp
from solver.queue_lazy import PRICE_TOL, reduced_costs
from solver.queue_model import N_MIN, NlpSolution, QueueProblem, WarmStart, _Callbacks, _jacobian, _Layout, solve_warm

log = logging.getLogger(__name__)

ENABLED = True
EXACT_SLACK = False  # False: the column generation's rows carry every pool's N_MIN slack from the start
# (no re-solve when the pools with rate change: 4.3 LP solves per R(S) instead of 5.6; queue_dual.prove_lp)
INNER = True  # the column generation's rows inside the NLP's (queue_dual._Lp.budgets_inner): a feasible warm start
SLIVERS = True  # start with the columns that fill empty pools' N_MIN instances (see _sliver_columns)
GAP = 3e-5  # the column generation's proven gap at the warm start (1e-5 before the polish: 2.66 LP solves per cored
# R(S) instead of 2.88; 1e-4 moved a plan 16 % worse: a one-step polish needs the LP's point close; docs/solver.md)
PRICE = True  # price the left-out columns (switched off only to show the property tests catching it)
MAX_ROUNDS = 3  # warm Ipopt solves per R(S) before the caller's path takes over
REDUCED_TOL = 1e-6  # LP reduced cost (relative to the largest column cost) within which a column joins
MU_WARM = 1e-10  # Ipopt's barrier parameter at the warm start (1e-9 before the exact bounds below: 1e-10 then saves
# ~0.7 iterations per R(S) more on the bench's relaxations; 1e-11 fewer still but twice the second pricing rounds)
PUSH = 1e-9  # how far Ipopt moves the warm point and multipliers inside their bounds
WARM_OPTIONS: dict[str, Any] = {
    "warm_start_init_point": "yes",
    "mu_init": MU_WARM,
    "tol": 1e-6,  # measured (cgfast): 5.25 iterations per R(S) instead of 5.75 at 1e-8, the same optima within 5e-12
    "max_iter": 100,  # the warm solves took 2-11 on 150 random instances; past this the cold path is the better bet
    "warm_start_bound_push": PUSH,
    "warm_start_bound_frac": PUSH,
    "warm_start_slack_bound_push": PUSH,
    "warm_start_slack_bound_frac": PUSH,
    "warm_start_mult_bound_push": PUSH,
    # Ipopt's bounds exactly as given (by default it relaxes each bound by 1e-8 of its size): from a start 1e-9
    # inside the true bounds, every variable and row slack at a bound then sat 1e-8 off the relaxed one, far
    # from the barrier's centre at a small mu, and Ipopt spent ~2 iterations walking them out by the
    # fraction-to-boundary rule (6.3 -> 4.8 iterations per R(S) where cores bind; bench/queue_warm_options.py)
    "bound_relax_factor": 0.0,
    "acceptable_iter": 0,  # never stop at Ipopt's "acceptable" level (up to 1e-2 infeasible): pricing needs a KKT point
}
EXACT_BOUNDS = (
    True  # WARM_OPTIONS' exact bounds and mu_init; False: session 9's start (bounds relaxed by 1e-8, mu 1e-9)
)
RELAXED_START: dict[str, Any] = {"bound_relax_factor": 1e-8, "mu_init": 1e-9}
LP_ANSWER = False  # R(S)'s answer is the column generation's point where its own bound at the NLP's budgets certifies
# it within ANSWER_GAP (no Ipopt: ``_lp_answer``); else Ipopt from that point as below
ANSWER_GAP = 1e-4  # relative gap of that certificate (the column generation stops at GAP on its inner budgets; the
# bound at the NLP's budgets sits up to ~3e-5 below that where core rows bind: each pool's N_MIN room at the core price)
POLISH = True  # Ipopt's first warm solve stops after POLISH_ITER iterations and its point is R(S)'s answer where the
# column generation's bound certifies it within POLISH_GAP (``_certified``); else Ipopt goes on to its KKT point as
# before. Plans move (the relaxation's point moves within the certificate), judged by their worth: docs/solver.md
POLISH_ITER = 1  # Ipopt's Newton steps on the NLP from the LP's point before the certificate is checked
POLISH_GAP = 1e-4  # relative gap of that certificate against the Lagrangian bound at the NLP's own budgets
POLISH_ROWS = 1e-8  # the stopped iterate may break a row by at most this (relative to max(1, the row's bound))
CHECK_ANSWER = True  # check the certificate (switched off only to show the tests catching an unchecked answer)
BoolArray = npt.NDArray[np.bool_]


def solve_certified(q: QueueProblem, allowed: BoolArray) -> NlpSolution | None:
    """R(S)'s optimum as Ipopt's point, warm from the proven column generation; None where this path fails."""
    if not ENABLED:
        return None
    try:
        found = prove_lp(q, allowed, GAP, EXACT_SLACK, INNER)
    except Exception as exc:
        log.warning("warm R(S): column generation failed (%r); the cold path solves it", exc)
        return None
    if found is None:
        return None
    lp = found.solution
    answer = _lp_answer(q, allowed, found) if LP_ANSWER else None
    if answer is not None:
        return answer
    scale = max(1.0, float(np.abs(q.base.cost).max(initial=0.0)))  # the pricing's scale too (``_priced_in``)
    in_lp = allowed & ((lp.x > 0) | (found.reduced <= REDUCED_TOL * scale))
    slivers = _sliver_columns(q, allowed, found) if SLIVERS else np.zeros_like(allowed)
    in_lp |= slivers
    point, proof = _lp_start(q, found, in_lp, slivers)
    y: FloatArray | Proof = proof
    iterations = 0
    for rounds in range(1, MAX_ROUNDS + 1):
        cols = np.flatnonzero(in_lp.ravel())
        warm = _warm(q, cols, point, y)
        short = POLISH and rounds == 1
        if short:
            warm = dataclasses.replace(warm, options=warm.options | {"max_iter": POLISH_ITER})
        try:
            sol, mult = solve_warm(q, cols, warm, POLISH_ROWS if short else None)
        except SolverUnavailableError:
            raise
        except SolverError as exc:
            log.info("warm R(S): Ipopt %s; the cold path solves it", exc)
            return None
        iterations += sol.iterations
        if short and sol.status in ("optimal", "iteration_limit") and _certified(q, allowed, found, sol):
            return dataclasses.replace(sol, status="optimal", iterations=iterations, rounds=rounds, columns=len(cols))
        if short and sol.status in ("iteration_limit", "infeasible iterate"):
            point, y = (sol.x, sol.r, sol.n), mult  # not certified: Ipopt goes on from its point to its KKT point
            continue
        if sol.status != "optimal":
            log.info("warm R(S): Ipopt %s in round %d; the cold path solves it", sol.status, rounds)
            return None
        enter = _priced_in(q, mult, in_lp, scale) & allowed
        if not enter.any() or not PRICE:
            return dataclasses.replace(sol, iterations=iterations, rounds=rounds, columns=len(cols))
        in_lp |= enter
        point, y = (sol.x, sol.r, sol.n), mult
    log.info("warm R(S): columns still price out after %d rounds; the cold path solves it", MAX_ROUNDS)
    return None


def _certified(q: QueueProblem, allowed: BoolArray, proof: Proof, sol: NlpSolution) -> bool:
    """Whether Ipopt's (stopped) point is within ``POLISH_GAP`` of R(S)'s optimum by the column generation's
    Lagrangian bound at its best prices and the NLP's own budgets (``nlp_budgets``: a lower bound on R(S) as Ipopt's
    objective counts it; weak duality, so whatever Ipopt's multipliers are). The point keeps R(S)'s rows
    (``solve_warm``'s ``rows`` check) and bounds (Ipopt's iterates are interior). A bound or value not finite
    certifies nothing (an infinite bound would put any point within the gap)."""
    lower = bound_and_loads(q, allowed, proof.prices, nlp_budgets(q))[0]
    return _within_gap(sol.value, lower)


def _within_gap(value: float, lower: float) -> bool:
    """Whether ``value`` is within ``POLISH_GAP`` (relative to max(1, |value|)) of the lower bound ``lower``, both
    finite (a NaN or an infinity is no certificate)."""
    finite = math.isfinite(lower) and math.isfinite(value)
    return finite and value - lower <= POLISH_GAP * max(1.0, abs(value))


def _lp_answer(q: QueueProblem, allowed: BoolArray, proof: Proof) -> NlpSolution | None:
    """The column generation's point as R(S)'s answer where the Lagrangian bound at its best prices and the NLP's
    own budgets (``nlp_budgets``: a lower bound on R(S)) is within ``ANSWER_GAP`` of its objective; else None.

    The point keeps every row of R(S) (the LP's rows lie inside the NLP's: ``INNER``) and each pool keeps N_MIN
    instances as in the NLP."""
    lp = proof.solution
    lower = bound_and_loads(q, allowed, proof.prices, nlp_budgets(q))[0]
    if CHECK_ANSWER and lp.value - lower > ANSWER_GAP * max(1.0, abs(lp.value)):
        return None
    n = np.maximum(lp.n, N_MIN)
    servers = None if lp.servers is None else n.copy()
    return dataclasses.replace(lp, n=n, servers=servers, iterations=0, columns=int(allowed.sum()))


def _sliver_columns(q: QueueProblem, allowed: BoolArray, proof: Proof) -> BoolArray:
    """[c, j] per pool without rate at the LP's optimum, the allowed column that gains most from the N_MIN
    instance every pool keeps in the NLP (a sliver of rate at no instance cost: reduced cost cost + y_assign
    at y_pool = 0), where that gain is positive."""
    p = q.base
    lam = proof.solution.lam
    gain = _by_model(q, np.where(allowed, p.cost + proof.assign[:, None], np.inf))  # [k, c, j]
    best = np.argmin(gain, axis=1)  # [k, j] per pool its model's first stream (in stream order) of least gain
    kk, jj = np.nonzero((gain.min(axis=1) < 0) & (lam.T <= 0))  # a negative least: the column gains
    out = np.zeros_like(allowed)
    out[best[kk, jj], jj] = True
    return out


def _by_model(q: QueueProblem, per_column: FloatArray) -> FloatArray:
    """[k, c, j] ``per_column`` [c, j] in its stream's model's plane, inf in the others' (a least over a model's
    streams is then one reduction over axis 1, exact as the least over its own rows)."""
    p = q.base
    out = np.full((len(p.model_names), *per_column.shape), np.inf)
    out[p.class_model, np.arange(p.n_classes)] = per_column
    return out


def _lp_start(
    q: QueueProblem, proof: Proof, in_lp: BoolArray, slivers: BoolArray
) -> tuple[tuple[FloatArray, FloatArray, FloatArray], Proof]:
    """The warm point (x, r, n) and the LP's multipliers, with the slivers carried (``_with_slivers``) and each
    pool without rate given the pool multiplier its restricted columns allow (``_empty_pool_prices``)."""
    x, r = _with_slivers(q, proof, slivers)
    n = np.maximum(proof.solution.n, N_MIN)
    return (x, r, n), dataclasses.replace(proof, pool=_empty_pool_prices(q, proof, in_lp))


def _with_slivers(q: QueueProblem, proof: Proof, slivers: BoolArray) -> tuple[FloatArray, FloatArray]:
    """x [c, j] and r [c] of the LP's optimum with each sliver column carrying the rate at which its N_MIN
    instance's marginal wait g'(t) - s meets what the stream saves there (at most the pool's cap), taken from
    the stream's largest column (or its rejection) as far as that holds it."""
    p = q.base
    lp = proof.solution
    x, r = lp.x.copy(), lp.r.copy()
    cc, jj = np.nonzero(slivers)
    mu = q.mu[jj, p.class_model[cc]]
    gain = np.maximum(-(p.cost[cc, jj] + proof.assign[cc]), 0.0)  # what a req/s moved there saves
    t = mu - np.sqrt(1000.0 * mu / (gain + 1000.0 / mu))
    amount = np.clip(t, 0.0, (q.cap() * q.mu)[jj, p.class_model[cc]]) * N_MIN
    per_stream = np.bincount(cc, weights=amount, minlength=p.n_classes)
    main = np.argmax(x, axis=1)
    from_x = (x.max(axis=1) >= r) & (per_stream > 0)
    source = np.maximum(np.where(from_x, x.max(axis=1), r), 0.0)
    share = np.divide(source, per_stream, out=np.ones_like(source), where=per_stream > 0)
    amount *= np.minimum(1.0, share)[cc]
    taken = np.bincount(cc, weights=amount, minlength=p.n_classes)
    rows = np.flatnonzero(from_x)
    x[rows, main[rows]] -= taken[rows]
    np.add.at(x, (cc, jj), amount)
    return x, np.where(from_x, r, r - taken)


def _empty_pool_prices(q: QueueProblem, proof: Proof, in_lp: BoolArray) -> FloatArray:
    """[P] pool multipliers: the LP's where a pool has rate; else the least ``cost + y_assign`` over its
    restricted columns, at most 0 (the LP's dual of an empty pool's row is any value below its columns'; at
    lam = 0 the NLP's is where the cheapest sliver would enter, 0 with none)."""
    p = q.base
    least = _by_model(q, np.where(in_lp, p.cost + proof.assign[:, None], np.inf)).min(axis=1).T  # [j, k]
    empty = (proof.solution.lam <= 0).ravel()
    return np.asarray(np.where(empty, np.minimum(least.ravel(), 0.0), proof.pool))


def _priced_in(q: QueueProblem, mult: FloatArray, in_lp: BoolArray, scale: float | None = None) -> BoolArray:
    """[c, j] left-out columns with a negative reduced cost at Ipopt's multipliers (solver.queue_lazy's rule;
    ``scale``: max(1, the largest |cost|) where the caller has it)."""
    red = reduced_costs(q, mult)
    tol = PRICE_TOL * (max(1.0, float(np.abs(q.base.cost).max(initial=0.0))) if scale is None else scale)
    return np.asarray(~in_lp & (red < -tol))


def _lp_multipliers(q: QueueProblem, lay: _Layout, proof: Proof, d_lam: FloatArray, lam: FloatArray) -> FloatArray:
    """The compact NLP's row multipliers from the LP's: assignment, pool balance, link, memory, compute and
    core rows map one to one; a throughput row's is what lam's stationarity asks where its pool has rate
    (dD/dlam - s + y_pool + y_thr = 0), else 0."""
    mem, comp, link, core = proof.prices
    thr = np.where(lam > 0, np.maximum(-(d_lam - q.service_ms.ravel() + proof.pool), 0.0), 0.0)
    return np.concatenate(
        [
            proof.assign,
            proof.pool,
            thr,
            link.ravel()[lay.linked],
            mem,
            comp,
            np.zeros(len(lay.cored)),
            core[lay.core_nodes],
        ]
    )


def _warm(q: QueueProblem, cols: IntArray, point: tuple[FloatArray, ...], y: FloatArray | Proof) -> WarmStart:
    """Ipopt's warm start on columns ``cols`` at ``point`` (x [c, j], r [c], n [j, k]) with row multipliers y."""
    p = q.base
    lay = _Layout(q, cols)
    xs, r, n = point
    v = np.zeros(lay.size)
    v[: lay.r0] = xs.ravel()[cols]
    v[lay.r0 : lay.lam0] = r
    lam = xs.T @ np.eye(lay.K)[p.class_model]
    v[lay.lam0 : lay.n0] = lam.ravel()
    nn = np.maximum(n.ravel(), N_MIN)
    nn[lay.pinned] = N_MIN
    v[lay.n0 : lay.new0] = nn
    v[lay.new0 : lay.e0] = np.maximum(nn[lay.linked] - p.free.ravel()[lay.linked], 0.0)
    v[lay.e0 :] = nn[lay.cored]
    jac = _jacobian(q, lay)
    rows, jcols, vals = jac[:3]
    calls = _Callbacks(q, lay, (rows, jcols, vals))
    if isinstance(y, Proof):
        y = _lp_multipliers(q, lay, y, calls._delay_at(v)[1], lam.ravel())
    grad = calls.gradient(v) + np.bincount(jcols, weights=vals * y[rows], minlength=lay.size)
    zl = np.maximum(grad, 0.0)
    zu = np.maximum(-grad, 0.0)
    return WarmStart(v, y, zl, zu, WARM_OPTIONS if EXACT_BOUNDS else WARM_OPTIONS | RELAXED_START, lay, jac, calls)
