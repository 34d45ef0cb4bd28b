"""A node with no memory left for a model: its pools' n is fixed at N_MIN in the compact NLP (solver.queue_model).

Regression: with MERGE_SERVERS the compact form made a pool's n its servers; on a node with cores and 0 MB
left, the memory row and the bound n >= N_MIN held n at one value, and Ipopt, which needs an interior, hit
its iteration limit on all four option sets (2,000 iterations, 1-3.5 s, against 12 ms before).
"""

from __future__ import annotations

import numpy as np
import pytest

from solver import queue_model, queue_warm
from solver.problem import Mode, build_problem
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import build_queue_problem, solve_nlp
from solver.snapshot import Snapshot


def no_room(rate: float) -> Snapshot:
    """n0 and n2 without a core count, n1 with 1 core and 0 MB left; one 140 MB model, 5000 req/s each."""

    def node(j: int, mem: float, cores: float | None = None) -> dict[str, object]:
        extra = {"cores": cores} if cores else {}
        return {
            "id": f"n{j}",
            "mem_available_mb": mem,
            "mem_total_mb": 2048.0,
            "compute": 100.0,
            "instances": {},
        } | extra

    return Snapshot.from_dict(
        {
            "nodes": [node(0, 2048.0), node(1, 0.0, 1.0), node(2, 2048.0)],
            "models": [{"name": "m0", "mem_mb": 140.0, "compute": 1.0, "throughput_rps": {"default": 5000.0}}],
            "requests": [
                {
                    "model": "m0",
                    "client": "c0",
                    "rate": rate,
                    "rtt_ms": {"n0": 75.5, "n1": 74.0, "n2": 88.1},
                    "exec_ms": dict.fromkeys(("n0", "n1", "n2"), 2.0),
                }
            ],
        }
    )


@pytest.mark.parametrize("rate", [100.0, 1000.0])
def test_ipopt_solves_a_node_without_memory_in_few_iterations(rate: float) -> None:
    q = build_queue_problem(build_problem(no_room(rate), Mode.MODE1))
    sol = solve_nlp_fast(q)
    assert sol.status == "optimal"
    assert sol.iterations <= 100  # the first option set's limit is 500: no retry ran


def test_the_iteration_check_fails_without_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_model, "PIN_NO_ROOM", False)
    monkeypatch.setattr(queue_warm, "ENABLED", False)  # the cold start (solver.queue_warm's start passes here)
    q = build_queue_problem(build_problem(no_room(1000.0), Mode.MODE1))
    assert solve_nlp_fast(q).iterations > 100


def test_the_pin_keeps_the_reference_forms_optimum() -> None:
    """The rows held n at N_MIN already, so fixing it there changes no optimum (reference form: nothing fixed)."""
    q = build_queue_problem(build_problem(no_room(1000.0), Mode.MODE1))
    compact, reference = solve_nlp(q), solve_nlp(q, compact=False)
    assert compact.status == reference.status == "optimal"
    assert compact.value == pytest.approx(reference.value, rel=1e-7)
    np.testing.assert_allclose(compact.x, reference.x, atol=1e-4)
    assert compact.n[1, 0] == pytest.approx(queue_model.N_MIN)
