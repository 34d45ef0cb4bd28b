"""The solve's plumbing made cheaper bit for bit (issue 16 target 5, session 19, solver19d).

Each function below was rewritten to do the same arithmetic with fewer numpy calls (lists instead of per-element
numpy access, one ``itemgetter`` or slice instead of a loop of them). The references here are the code as it was;
every field they produce must be equal to the last bit, on the thesis's sizes at 0 / 1 / 2 cores in both modes,
with instances running, with declared throughputs (per node, ``default``, both and none), on one node, on a
model without streams, and on snapshots with no requests or no nodes.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from bench.queue_bench import SIZES, with_cores, with_running
from solver.problem import Mode, Problem, build_problem, plan_actions, plan_instances, running_instances
from solver.queue_model import MU_MAX, MU_MIN, _rate, build_queue_problem
from solver.queue_plan import integer_part
from solver.simulate import thesis_instance
from solver.snapshot import Model, Snapshot


def _old_running(snapshot: Snapshot) -> np.ndarray:
    names = [m.name for m in snapshot.models]
    out = np.zeros((len(snapshot.nodes), len(names)), dtype=np.int64)
    for j, n in enumerate(snapshot.nodes):
        for k, name in enumerate(names):
            out[j, k] = n.instances.get(name, 0)
    return out


def _old_instances(p: Problem, target: np.ndarray) -> dict[str, dict[str, int]]:
    return {
        node: {p.model_names[k]: int(target[j, k]) for k in range(len(p.model_names)) if target[j, k] > 0}
        for j, node in enumerate(p.node_ids)
    }


def _old_actions(p: Problem, running: np.ndarray, target: np.ndarray) -> list[tuple[str, str, str, int]]:
    out = []
    for j, node in enumerate(p.node_ids):
        for k, model in enumerate(p.model_names):
            delta = int(target[j, k] - running[j, k])
            if delta:
                out.append(("start" if delta > 0 else "stop", node, model, abs(delta)))
    return out


def _old_members(p: Problem) -> tuple[tuple[int, ...], ...]:
    """``_classes``' members by np.split, from the labels the classes' first members give."""
    if p.n_requests == 0:
        return ()  # _classes answers no classes before splitting
    label = np.empty(p.n_requests, dtype=np.int64)
    for c, members in enumerate(p.class_members):
        label[list(members)] = c
    by_class = np.argsort(label, kind="stable")
    count = np.bincount(label)
    return tuple(tuple(g.tolist()) for g in np.split(by_class, np.cumsum(count)[:-1]))


def _old_mu(p: Problem) -> np.ndarray:
    """``build_queue_problem``'s service rates as the element loop made them (np.median's value per node)."""
    from solver.node_cpu import node_cores, node_slots

    s = p.snapshot
    mu = np.zeros((p.n_nodes, len(p.model_names)))
    for k, model in enumerate(s.models):
        mine = [[r.exec_ms[node] for node in p.node_ids] for r in s.requests if r.model == model.name]
        median = None
        if mine:
            rows = np.sort(np.asarray(mine, dtype=float), axis=0)
            half = len(mine) // 2
            median = rows[half] if len(mine) % 2 else (rows[half - 1] + rows[half]) / 2
        for j, node in enumerate(p.node_ids):
            declared = model.throughput_rps.get(node, model.throughput_rps.get("default"))
            if declared is not None:
                mu[j, k] = declared
            else:
                mu[j, k] = 1000.0 / max(float(median[j]), 1e-3) if median is not None else 1000.0
    mu *= np.minimum(node_cores(p), 1.0)[:, None]
    mu *= node_slots(p)[:, None]
    return np.clip(mu, MU_MIN, MU_MAX)


def _declared(s: Snapshot, how: str) -> Snapshot:
    """``s`` with throughputs declared: on every other node, as ``default``, both, or for the first model only."""
    ids = [n.id for n in s.nodes]
    models = []
    for k, m in enumerate(s.models):
        table: dict[str, float] = {}
        if how in ("nodes", "both"):
            table.update({node: 40.0 + 7 * j + k for j, node in enumerate(ids) if j % 2 == 0})
        if how in ("default", "both"):
            table["default"] = 55.5 + k
        if how == "first" and k == 0:
            table = {node: 90 for node in ids}  # ints, as JSON gives them
        models.append(dataclasses.replace(m, throughput_rps=table))
    return dataclasses.replace(s, models=tuple(models))


def _snapshots() -> list[Snapshot]:
    out = []
    for (r, n), seed in itertools.product(SIZES, range(2)):
        s = thesis_instance(r, n, seed)
        out += [s, with_cores(s, 1.0), with_cores(s, 2.0), with_running(s, seed)]
    base = thesis_instance(25, 10, 3)
    out += [_declared(base, how) for how in ("nodes", "default", "both", "first")]
    one = thesis_instance(10, 1, 0)  # one node: itemgetter of one key answers a value, not a tuple
    out += [one, with_running(one, 0), _declared(one, "nodes")]
    silent = dataclasses.replace(base, models=(*base.models, Model("nobody", 100.0, 1.0)))  # a model without streams
    out += [silent, dataclasses.replace(base, requests=())]  # (a snapshot has at least one node)
    return out


@pytest.mark.parametrize("mode", [Mode.MODE1, Mode.MODE2])
def test_problem_and_plan_plumbing_bit_for_bit(mode: Mode) -> None:
    """Classes, running counts, plan instances and actions, service rates and rates: equal to the old code's."""
    seen = 0
    for s in _snapshots():
        p = build_problem(s, mode)
        assert p.class_members == _old_members(p)
        running = running_instances(s)
        assert running.dtype == np.int64 and np.array_equal(running, _old_running(s))
        target = running + (np.arange(running.size).reshape(running.shape) % 3) - 1  # starts, stops and zeros
        assert plan_instances(p, target) == _old_instances(p, target)
        assert [(a.op, a.node, a.model, a.count) for a in plan_actions(p, running, target)] == _old_actions(
            p, running, target
        )
        q = build_queue_problem(p)
        assert q.mu.tobytes() == _old_mu(p).tobytes()
        rate = [sum(_rate(s.requests[i].rate) for i in members) for members in p.class_members]
        assert q.rate.tolist() == rate
        seen += 1
    assert seen == len(_snapshots())


def test_move_screen_terms_in_one_call() -> None:
    """``_here_and_there``'s one call answers what ``_move_one``'s two ``_terms`` calls did, bit for bit: on cored
    thesis placements after repair and closing (where the move pass runs), at up to 4 destinations per pool."""
    from solver.queue_close_fast import _here_and_there, _terms
    from solver.queue_fast import solve_nlp_fast

    checked = 0
    for (r, n), seed in itertools.product(SIZES, range(2)):
        s = with_cores(thesis_instance(r, n, seed), 2.0)
        q = build_queue_problem(build_problem(s, Mode.MODE2))
        pools, _ = integer_part(q, solve_nlp_fast(q), last="pools_closed")
        lam = pools.lam()
        J, K = lam.shape
        m = min(4, J - 1)
        dsts = (np.arange(J)[None, :, None] + 1 + np.arange(m)[None, None, :]) % J  # nodes other than j
        dsts = np.broadcast_to(dsts, (K, J, m)).copy()
        kk = np.arange(K)[:, None, None]
        here = _terms(pools, lam, (slice(None), slice(None))).T
        there = _terms(pools, lam.T[:, :, None] + lam.T[kk, dsts], (dsts, kk))
        new_here, new_there = _here_and_there(pools, lam, dsts)
        assert new_here.shape == here.shape and new_there.shape == there.shape
        assert np.ascontiguousarray(new_here).tobytes() == np.ascontiguousarray(here).tobytes()
        assert np.ascontiguousarray(new_there).tobytes() == np.ascontiguousarray(there).tobytes()
        checked += 1
    assert checked == 2 * len(SIZES)
