"""Turn a fractional placement into an integer one that never breaks memory or compute.

Input: ``y[c, j]``, the (possibly fractional) number of class-c requests on node j from the LP.

1. Floors first: every class places floor(y[c, j]) requests on node j, largest y first, each only if it
   still fits (the ledger checks memory and compute for every request, so no step can overshoot).
2. Remainders: each class's unplaced requests go to the node with the largest fractional part of
   y[c, j] that still fits, then to the cheapest node that fits; a request that fits nowhere is
   rejected with the reason.
3. Improvement: move single requests to a cheaper node while one fits (first-improvement local search,
   a bounded number of passes), then retry rejected requests in case moves freed room.
4. Ejection: a request still rejected may take a node's place if one request already there (of another
   model) can move to a node where it fits; the cheapest such exchange is taken.

Every request ends either placed or rejected; the ledger guarantees capacity at every step.
"""

from __future__ import annotations

import math

import numpy as np

from solver.capacity import EPS, Ledger
from solver.problem import FloatArray, IntArray, Problem

MAX_IMPROVE_PASSES = 4


def round_and_repair(problem: Problem, y: FloatArray) -> tuple[IntArray, IntArray, list[str]]:
    """Integer counts [c, j], rejected counts [c] and one rejection reason per class (or '')."""
    p = problem
    ledger = Ledger(p)
    counts: IntArray = np.zeros((p.n_classes, p.n_nodes), dtype=np.int64)
    y = np.clip(y, 0.0, None)
    base = np.floor(y + EPS).astype(np.int64)
    left, model = p.class_count.tolist(), p.class_model.tolist()  # requests of each class not yet placed
    for c, j in _pairs_by_weight(y):
        want = min(int(base[c, j]), left[c])
        if want > 0:
            placed = ledger.add_up_to(j, model[c], want)  # while one fits, as one at a time would
            counts[c, j] += placed
            left[c] -= placed
    rejected: IntArray = np.zeros(p.n_classes, dtype=np.int64)
    reasons = [""] * p.n_classes
    residual = y - counts
    cheapest = np.argsort(p.cost, axis=1, kind="stable")
    missing = p.class_count - counts.sum(axis=1)
    order = np.argsort(-residual.max(axis=1, initial=0.0), kind="stable")
    for c in order[missing[order] > 0].tolist():
        _place_remaining(p, ledger, counts, rejected, reasons, c, residual[c], cheapest[c])
    _improve(p, ledger, counts, cheapest)
    for c in np.nonzero(rejected)[0].tolist():
        rejected[c] = 0
        _place_remaining(p, ledger, counts, rejected, reasons, c, np.zeros(p.n_nodes), cheapest[c])
    for c in np.nonzero(rejected)[0].tolist():
        while rejected[c] > 0 and _place_by_ejection(p, ledger, counts, c, cheapest):
            rejected[c] -= 1
    return counts, rejected, reasons


def improve_placement(problem: Problem, counts: IntArray) -> IntArray:
    """Run the local search on an already feasible placement (used by baselines that want it)."""
    ledger = Ledger(problem)
    for c in range(problem.n_classes):
        for j in range(problem.n_nodes):
            for _ in range(int(counts[c, j])):
                ledger.add(j, int(problem.class_model[c]))
    out = counts.copy()
    _improve(problem, ledger, out, np.argsort(problem.cost, axis=1, kind="stable"))
    return out


def _pairs_by_weight(y: FloatArray) -> list[tuple[int, int]]:
    cs, js = np.nonzero(y >= 1.0 - EPS)
    weights = y[cs, js]
    idx = np.argsort(-weights, kind="stable")
    return [(int(cs[i]), int(js[i])) for i in idx]


def _place_remaining(
    p: Problem,
    ledger: Ledger,
    counts: IntArray,
    rejected: IntArray,
    reasons: list[str],
    c: int,
    residual: FloatArray,
    by_cost: IntArray,
) -> None:
    k = int(p.class_model[c])
    cost = p.cost[c]
    some = np.nonzero(residual > EPS)[0]
    preferred = some[np.lexsort((cost[some], -residual[some]))].tolist()
    cheapest = by_cost.tolist()
    missing = int(p.class_count[c] - counts[c].sum() - rejected[c])
    for _ in range(missing):
        j = ledger.best_fitting_node(k, preferred)
        if j is None:
            j = ledger.best_fitting_node(k, cheapest)
        if j is None:
            rejected[c] += 1
            reasons[c] = ledger.rejection_reason(k)
            continue
        ledger.add(j, k)
        counts[c, j] += 1
        if residual[j] > EPS:
            residual[j] = max(0.0, residual[j] - 1.0)
            preferred = [x for x in preferred if residual[x] > EPS]


def _improve(p: Problem, ledger: Ledger, counts: IntArray, order: IntArray) -> None:
    orders, costs = order.tolist(), p.cost.tolist()  # Python lists: read once per request moved or tried
    for _ in range(MAX_IMPROVE_PASSES):
        moved = False
        for c in range(p.n_classes):
            k = int(p.class_model[c])
            for j in np.nonzero(counts[c])[0].tolist():
                while counts[c, j] > 0:
                    target = _cheaper_fit(costs[c], ledger, orders[c], j, k)
                    if target is None:
                        break
                    ledger.remove(j, k)
                    ledger.add(target, k)
                    counts[c, j] -= 1
                    counts[c, target] += 1
                    moved = True
        if not moved:
            return


def _cheaper_fit(cost: list[float], ledger: Ledger, order: list[int], j: int, k: int) -> int | None:
    """The first node in ``order`` (by cost) cheaper than j by more than rounding where model k fits."""
    limit = cost[j] - max(EPS, 1e-9 * math.fabs(cost[j]))
    for t in order:
        if cost[t] >= limit:
            return None
        if ledger.fits(t, k):
            return t
    return None


def _place_by_ejection(p: Problem, ledger: Ledger, counts: IntArray, c: int, by_cost: IntArray) -> bool:
    """Place one request of class c by moving one other request out of the way; False if impossible.

    ``by_cost`` [c, :] is each class's nodes, cheapest first (stable order).
    """
    model = p.class_model.tolist()
    k = model[c]
    cs, js = np.nonzero(counts.T)  # node, class: the classes with requests on each node, class order
    on_node: dict[int, list[int]] = {}
    for j, other in zip(cs.tolist(), js.tolist(), strict=True):
        on_node.setdefault(j, []).append(other)
    cost = p.cost.tolist()
    best: tuple[float, int, int, int, int] | None = None  # (added cost, node, other class, its new node)
    for j in by_cost[c].tolist():
        for other in on_node.get(j, ()):
            k2 = model[other]
            if k2 == k:
                continue
            ledger.remove(j, k2)
            if ledger.fits(j, k):
                ledger.add(j, k)
                for t in by_cost[other].tolist():
                    if t != j and ledger.fits(t, k2):
                        delta = cost[c][j] + cost[other][t] - cost[other][j]
                        if best is None or delta < best[0]:
                            best = (delta, j, other, t, k2)
                        break
                ledger.remove(j, k)
            ledger.add(j, k2)
    if best is None:
        return False
    _, j, other, t, k2 = best
    ledger.remove(j, k2)
    ledger.add(t, k2)
    ledger.add(j, k)
    counts[other, j] -= 1
    counts[other, t] += 1
    counts[c, j] += 1
    return True
