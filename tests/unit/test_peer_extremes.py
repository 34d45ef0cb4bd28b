"""Figures from peers at the edge of what parses: the leader's snapshot drops implausible durations and the
queue-aware solve answers (a reviewer's attack: a peer logging 1.7e308 ms latencies on its node, reporting
1/64 core, overflowed the pool closing with OverflowError; with running instances Ipopt failed outright)."""

from __future__ import annotations

import math

import pytest

from agent.placement import MAX_LATENCY_MS, MAX_RTT_MS, parse_request
from solver.api import solve
from solver.problem import Mode, build_problem
from solver.queue_model import MU_MAX, MU_MIN, build_queue_problem
from solver.snapshot import Model, Node, Request, Snapshot


def record(latency: object, rtt: object = 5.0) -> dict[str, object]:
    return {
        "ts": 1.0,
        "model": "m0",
        "client": "c",
        "rtt_ms": {"n0": rtt},
        "node": "n0",
        "latency_ms": latency,
        "status": 200,
    }


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, 1.7e308, MAX_LATENCY_MS * 2])
def test_an_implausible_latency_is_not_a_measurement(bad: float) -> None:
    assert parse_request(record(bad)).latency_ms is None


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -3.0, MAX_RTT_MS * 2])
def test_an_implausible_round_trip_is_dropped(bad: float) -> None:
    assert parse_request(record(12.5, bad)).rtt_ms == {}


def test_plausible_figures_pass_unchanged() -> None:
    r = parse_request(record(12.5, 3.25))
    assert r.latency_ms == 12.5 and r.rtt_ms == {"n0": 3.25}
    assert parse_request(record(None)).latency_ms is None


def extreme(throughput: dict[str, float], cores0: float, running0: dict[str, int], mem0: float) -> Snapshot:
    ids = [f"n{j}" for j in range(4)]
    nodes = tuple(
        Node(
            n,
            mem0 if j == 0 else 2000.0,
            4000.0,
            4.0,
            running0 if j == 0 else {},
            node_class="c",
            cores=cores0 if j == 0 else 2.0,
        )
        for j, n in enumerate(ids)
    )
    models = (Model("m0", 100.0, 1.0, throughput), Model("m1", 300.0, 1.0, throughput))
    requests = tuple(
        Request(
            f"m{c % 2}",
            {n: 5.0 + 10 * ((c + j) % 4) for j, n in enumerate(ids)},
            dict.fromkeys(ids, 3.0),
            client=f"c{c}",
            rate=5.0,
        )
        for c in range(12)
    )
    return Snapshot(nodes, models, requests, objective="queue")


CASES = {
    "one node priced at 1e-305 req/s": ({"default": 300.0, "n0": 1000.0 / 1.7e308}, 1 / 64, {}, 2000.0),
    "the same with instances running and no memory": (
        {"default": 300.0, "n0": 1000.0 / 1.7e308},
        1 / 64,
        {"m0": 3},
        0.0,
    ),
    "every node at 1e-200 req/s": ({"default": 1e-200}, 2.0, {}, 2000.0),
    "every node at 1e15 req/s": ({"default": 1e15}, 2.0, {}, 2000.0),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("objective", ["queue", "queue-p99"])
def test_the_queue_solve_answers_at_extreme_service_rates(name: str, objective: str) -> None:
    snap = extreme(*CASES[name])
    q = build_queue_problem(build_problem(snap, Mode.MODE1))
    assert q.mu.min() >= MU_MIN and q.mu.max() <= MU_MAX
    plan = solve(snap, mode="1", objective=objective)
    assert math.isfinite(plan.objective_ms)
    if name != "every node at 1e-200 req/s":
        assert plan.served == 12
    if snap.nodes[0].cores == 1 / 64:  # the sane nodes serve every stream; the absurd one starts nothing
        assert plan.instances["n0"] == snap.nodes[0].instances


@pytest.mark.parametrize("bad", [10**4000, 99, 1000, -200, True, 200.0, "2e2", "20000", None, [200]])
def test_a_status_that_is_no_http_status_is_refused(bad: object) -> None:
    """The record's status is an HTTP status code or the page is refused (the gather counts it failed, by name)."""
    raw = {**record(12.5), "status": bad}
    with pytest.raises(ValueError, match="status"):
        parse_request(raw)


def test_http_statuses_pass() -> None:
    for ok in (100, 200, "503", 599, 999):
        assert parse_request({**record(12.5), "status": ok}).status == int(ok)
