"""Repair's placements on fixed random inputs, recorded (tests/unit/data/queue_repair_golden.json): a refactor
of solver/queue_repair.py must give the same plans.

The inputs are synthetic relaxation outputs (random splits of each stream's rate, some pools a hair above
whole instances, rejected rate, random fractional counts) on random clusters with memory that binds and 1-4
cores per node, so every shedding loop of repair runs (rejecting the smallest streams' rate for a hair, for
busy work over a node's cores, and for memory); no Ipopt, so the record does not depend on its tolerance.
Regenerate only on purpose: ``python -m tests.unit.test_queue_repair_golden``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from solver.problem import FloatArray, Mode, build_problem
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_repair import repair
from solver.snapshot import Model, Node, Request, Snapshot

GOLDEN = Path(__file__).parent / "data" / "queue_repair_golden.json"


def snapshot(rng: np.random.Generator) -> Snapshot:
    """1-4 nodes (most with 1-4 cores, 100-1200 MB free), 1-3 models, 1-8 streams of 0.5-300 req/s."""
    n_nodes, n_models = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    nodes = tuple(
        Node(f"n{j}", float(rng.uniform(100, 1200)), 2048.0, 100.0,
             cores=float(rng.choice([1.0, 2.0, 3.0, 4.0])) if rng.random() < 0.8 else None)
        for j in range(n_nodes)
    )  # fmt: skip
    models = tuple(
        Model(f"m{k}", float(rng.uniform(50, 300)), 1.0, {"default": float(rng.uniform(20, 400))})
        for k in range(n_models)
    )
    ids = [n.id for n in nodes]
    reqs = tuple(
        Request(f"m{int(rng.integers(0, n_models))}", {i: float(rng.uniform(0.5, 100)) for i in ids},
                dict.fromkeys(ids, 2.0), f"c{c}", float(rng.uniform(0.5, 300)))
        for c in range(int(rng.integers(1, 9)))
    )  # fmt: skip
    return Snapshot(nodes, models, reqs)


def cases(count: int = 60) -> Iterator[tuple[int, QueueProblem, FloatArray, FloatArray, FloatArray]]:
    """(seed, problem, rates x [c, j], rejected [c], fractional counts n [j, k]) per seed."""
    for s in range(count):
        rng = np.random.default_rng(s)
        q = build_queue_problem(build_problem(snapshot(rng), Mode.MODE2 if s % 2 else Mode.MODE1))
        p = q.base
        split = rng.dirichlet(np.ones(p.n_nodes), size=p.n_classes)
        x = q.rate[:, None] * split * rng.uniform(0.6, 1.0, size=(p.n_classes, 1))
        onehot = np.eye(len(p.model_names))[p.class_model]
        lam, cap = x.T @ onehot, q.cap() * q.mu
        hair = (rng.random(lam.shape) < 0.3) & (lam > 0)  # pools a hair above whole instances
        whole = np.maximum(np.round(lam / cap), 1) * cap * (1 + 3e-7)
        x = x * np.where(hair, whole / np.where(lam > 0, lam, 1.0), 1.0).T[p.class_model]
        x = np.minimum(x, q.rate[:, None] / p.n_nodes * 3)
        rejected = np.clip(q.rate - x.sum(axis=1), 0.0, None)
        n = (x.T @ onehot) / cap * rng.uniform(0.8, 1.6, size=lam.shape)
        yield s, q, x, rejected, n


def record() -> dict[str, Any]:
    """Repair's counts, rates and rejected rate on every case."""
    out = {}
    for s, q, x, rejected, n in cases():
        pools = repair(q, x, rejected, n)
        out[str(s)] = {
            "counts": pools.counts().tolist(),
            "x": pools.x.round(9).tolist(),
            "rejected": pools.rejected.round(9).tolist(),
        }
    return out


def test_repair_gives_the_recorded_plans() -> None:
    want = json.loads(GOLDEN.read_text())
    got = record()
    assert got.keys() == want.keys()
    for s, case in want.items():
        assert got[s]["counts"] == case["counts"], s
        np.testing.assert_allclose(got[s]["x"], case["x"], rtol=0, atol=1e-8, err_msg=s)
        np.testing.assert_allclose(got[s]["rejected"], case["rejected"], rtol=0, atol=1e-8, err_msg=s)


def test_the_record_check_fails_when_repair_changes(monkeypatch: Any) -> None:
    """Rejecting from the largest streams first instead of the smallest: the check above sees it."""
    from solver import queue_repair

    want = json.loads(GOLDEN.read_text())

    def largest_first(pools: Any, j: int, members: list[int]) -> list[int]:
        return sorted(members, key=lambda c: -pools.x[c, j])

    monkeypatch.setattr(queue_repair, "_smallest_first", largest_first)
    got = record()
    assert any(
        got[s]["counts"] != c["counts"] or not np.allclose(got[s]["x"], c["x"], rtol=0, atol=1e-8)
        for s, c in want.items()
    )


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(record(), separators=(",", ":")) + "\n")
