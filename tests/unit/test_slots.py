"""An instance serves several requests at once: ``slots = min(concurrency, max(cores, 1))`` (issue 16 item 5).

The solver sees an instance with ``s`` slots as one server at ``s x mu`` on a node of ``cores / s`` instance
units (solver.node_cpu.node_slots, solver.queue_model); the simulation runs it as FIFO with ``s`` requests in
service, all of a node's running requests sharing its cores (solver.shared_cores, solver.agent_sim).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import placement
from agent.settings import ConfigError, load_settings
from solver import queue_repair, snapshot
from solver.agent_sim import Fixed, event_sojourn_ms
from solver.api import solve
from solver.errors import SnapshotError
from solver.node_cpu import node_cores, node_slots
from solver.problem import Mode, build_problem
from solver.queue_model import QueueProblem, build_queue_problem
from solver.queue_repair import Pools
from solver.queueing import requests_at_instance
from solver.shared_cores import shared_sojourn_ms
from solver.snapshot import Model, Node, Request, Snapshot
from solver.workload import Workload, lab_snapshot, run, sim_slots
from tests.unit.test_instance_bound import cluster
from tests.unit.test_solver_queue_placement import check, spread_violations


def erlang_c(c: int, a: float) -> float:
    """Probability that an M/M/c arrival waits, offered load ``a = lam / mu`` < c (the Erlang C formula)."""
    term, total = 1.0, 1.0
    for i in range(1, c):
        term *= a / i
        total += term
    last = term * a / c / (1.0 - a / c)
    return last / (total + last)


def kiefer_wolfowitz_ms(arrival: np.ndarray, service: np.ndarray, c: int) -> np.ndarray:
    """FIFO with c servers, exact per request: each starts when the earliest-free server frees (Kiefer-Wolfowitz)."""
    free = [0.0] * c
    out = np.empty(len(arrival))
    for i, (a, s) in enumerate(zip(arrival.tolist(), service.tolist(), strict=True)):
        start = max(a, heapq.heappop(free))
        heapq.heappush(free, start + s)
        out[i] = 1000.0 * (start + s - a)
    return out


def node(i: str, cores: float | None, concurrency: float | None) -> Node:
    return Node(i, 4096.0, 4096.0, 100.0, cores=cores, concurrency=concurrency)


def lab(cores: float | None, concurrency: float | None, rate: float = 60.0) -> Snapshot:
    ids = ("a", "b", "c")
    reqs = tuple(
        Request(
            "m", {n: 1.0 + 3.0 * ((i + j) % 3) for j, n in enumerate(ids)}, dict.fromkeys(ids, 20.0), f"c{i}", rate / 6
        )
        for i in range(6)
    )
    return Snapshot(tuple(node(n, cores, concurrency) for n in ids), (Model("m", 100.0, 1.0, {"default": 50.0}),), reqs)


# --- the solver's transform -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "concurrency", "slots"),
    [
        (2.0, None, 1.0),
        (2.0, 1.0, 1.0),
        (2.0, 2.0, 2.0),
        (2.0, 8.0, 2.0),
        (None, 3.0, 3.0),
        (0.5, 4.0, 1.0),
        (3.5, 3.0, 3.0),
    ],
)
def test_slots_are_the_concurrency_at_most_the_cores_and_scale_mu_and_the_core_units(
    cores: float | None, concurrency: float | None, slots: float
) -> None:
    p = build_problem(lab(cores, concurrency), Mode.MODE2)
    q = build_queue_problem(p)
    one = build_queue_problem(build_problem(lab(cores, None), Mode.MODE2))
    assert node_slots(p).tolist() == [slots] * 3
    np.testing.assert_allclose(q.mu, one.mu * slots)
    np.testing.assert_allclose(q.cores(), one.cores() / slots)
    assert np.all(q.cores() >= 1.0)  # an instance never needs more cores than the node has
    # the busy-work row means the same seconds of a core in both units
    np.testing.assert_allclose(30.0 / q.mu / q.cores(), 30.0 / one.mu / one.cores())


def test_one_slot_leaves_the_plan_bit_for_bit() -> None:
    """concurrency 1 (or a concurrency one core caps at 1) is today's model: the same plan exactly."""
    for cores in (2.0, 1.0):
        base = solve(lab(cores, None), mode="2", objective="queue-p99")
        for conc in (1.0, 4.0) if cores == 1.0 else (1.0,):
            other = solve(lab(cores, conc), mode="2", objective="queue-p99")
            assert (other.instances, other.shares, other.objective_ms) == (
                base.instances,
                base.shares,
                base.objective_ms,
            )
            assert other.details.get("planned_queue") == base.details.get("planned_queue")
    two = solve(lab(2.0, 2.0), mode="2", objective="queue-p99")  # the checker sees the slots when there are two
    one = solve(lab(2.0, None), mode="2", objective="queue-p99")
    assert (two.instances, two.objective_ms) != (one.instances, one.objective_ms)


@pytest.mark.parametrize("c", [1, 2, 3, 4, 8, 16, 64])
def test_the_mm1_wait_at_c_mu_bounds_the_mmc_wait_from_above(c: int) -> None:
    """Erlang C <= rho, so the model's wait rho / (c mu - lam) is at least M/M/c's C / (c mu - lam); equal at c 1."""
    mu = 50.0
    for rho in np.linspace(0.01, 0.99, 99):
        lam = rho * c * mu
        pw = erlang_c(c, lam / mu)
        assert pw <= rho + 1e-12
        mm1 = rho / (c * mu - lam)  # M/M/1 at c mu: mean wait
        mmc = pw / (c * mu - lam)
        assert mm1 >= mmc - 1e-15
        if c == 1:
            assert pw == pytest.approx(rho)


def test_the_instance_bound_counts_the_slots() -> None:
    """60 req/s of a 50 req/s model on 2-core nodes: two-slot instances carry 90 req/s at rho_max, so the plan
    runs at most need (1) + one spare; one slot needs 2 + one spare."""
    two = solve(lab(2.0, 2.0), mode="2", objective="queue-p99")
    one = solve(lab(2.0, None), mode="2", objective="queue-p99")
    assert sum(c.get("m", 0) for c in two.instances.values()) <= math.ceil(60.0 / (0.9 * 100.0)) + 1
    assert sum(c.get("m", 0) for c in one.instances.values()) <= math.ceil(60.0 / (0.9 * 50.0)) + 1
    assert not two.rejected and not one.rejected


def equivalent_without_slots(snap: Snapshot) -> Snapshot:
    """``snap`` with every node's slots folded into its figures: cores / slots cores and slots x the instance's
    throughput, no concurrency (the QueueProblem ``build_queue_problem`` makes of both must be the same)."""
    slots = node_slots(build_problem(snap, Mode.MODE2))
    nodes = tuple(
        dataclasses.replace(n, cores=None if n.cores is None else n.cores / float(s), concurrency=None)
        for n, s in zip(snap.nodes, slots.tolist(), strict=True)
    )
    models = tuple(
        dataclasses.replace(
            m,
            throughput_rps={
                "default": m.throughput_rps["default"],
                **{n.id: m.throughput_rps["default"] * s for n, s in zip(snap.nodes, slots.tolist(), strict=True)},
            },
        )
        for m in snap.models
    )
    return dataclasses.replace(snap, nodes=nodes, models=models)


def integer_part(snap: Snapshot, mode: Mode, tail: bool) -> tuple[QueueProblem, Pools]:
    """solver.queue_plan's steps: relaxation, repair, pool closing, moves, the best split."""
    from solver.queue_close_fast import close_pools_fast
    from solver.queue_fast import solve_nlp_fast
    from solver.queue_move import move_instances
    from solver.queue_repair import repair
    from solver.queue_split import best_split
    from solver.tail_cap import with_tail_cap

    q = build_queue_problem(build_problem(snap, mode))
    q = with_tail_cap(q) if tail else q
    nlp = solve_nlp_fast(q)
    pools = repair(q, nlp.x, nlp.r, nlp.n)
    close_pools_fast(pools)
    move_instances(pools)
    best_split(pools)
    return q, pools


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from([Mode.MODE1, Mode.MODE2]), st.booleans())
def test_slots_are_exactly_the_transform_on_random_clusters(data: st.DataObject, mode: Mode, tail: bool) -> None:
    """1-4 nodes of 1-4 cores, each with a concurrency of 1-6 (or none), 2-3 models, tail cap or not: the queue
    problem, and so the whole integer part, is bit for bit that of the cluster with the slots folded into cores
    and throughput (every invariant the integer part keeps there holds here, and no new bound violation);
    budgets and rates hold, and every node's busy work in CORE seconds stays under rho_max x its cores."""
    snap = cluster(data.draw)
    conc = [data.draw(st.sampled_from([None, 1.0, 2.0, 3.0, 6.0])) for _ in snap.nodes]
    snap = dataclasses.replace(
        snap, nodes=tuple(dataclasses.replace(n, concurrency=c) for n, c in zip(snap.nodes, conc, strict=True))
    )
    q, pools = integer_part(snap, mode, tail)
    q_eq, pools_eq = integer_part(equivalent_without_slots(snap), mode, tail)
    assert np.array_equal(q.mu, q_eq.mu) and np.array_equal(q.cores(), q_eq.cores())
    assert np.array_equal(pools.counts(), pools_eq.counts()) and np.array_equal(pools.x, pools_eq.x)
    assert spread_violations(pools) == spread_violations(pools_eq)
    check(pools, bound=False)
    slots = node_slots(q.base)
    core_seconds = (pools.lam() / (q.mu / slots[:, None])).sum(axis=1)  # each request runs on one core
    cores = np.array([n.cores for n in snap.nodes])
    assert np.all(core_seconds <= q.rho_max * cores * (1 + 1e-6) + 1e-6 * slots)  # busy.TOL in instance units


def test_the_transform_check_fails_where_the_cores_forget_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The equivalence above is a real check: with QueueProblem.cores() counting whole cores (slots left out)
    a two-slot cluster no longer matches its folded twin."""
    snap = lab(2.0, 2.0)
    q, _ = integer_part(snap, Mode.MODE2, False)
    q_eq, _ = integer_part(equivalent_without_slots(snap), Mode.MODE2, False)
    assert np.array_equal(q.cores(), q_eq.cores())
    monkeypatch.setattr(QueueProblem, "cores", lambda self: np.maximum(node_cores(self.base), 1.0))
    assert not np.array_equal(q.cores(), q_eq.cores())


FULL_CORES = (  # (model, RTT to n0-n3, rate) per stream: found by the test above, shrunk
    (0, (1, 1, 1, 1), 16.0), (0, (2, 2, 2, 1.5), 3.0), (0, (36, 1, 3, 3), 18.0), (0, (1, 1, 1, 1), 1.0),
    (0, (1, 1, 1, 1), 1.0), (0, (1, 1, 1, 1), 19.0), (1, (1, 1, 1, 1), 65.0), (2, (1, 1, 1, 2), 24.0),
)  # fmt: skip


@pytest.mark.parametrize("slots", [True, False])
def test_full_cores_everywhere_keep_the_bound_with_or_without_slots(
    slots: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """147 req/s of 20 req/s instances on 3 + 1 + 1 + 3 cores (more than rho_max of all cores carries), n0's
    instances 3-slot; the same cluster without slots (n0: 1 core, a 60 req/s instance) is the same problem.
    On the relaxation point of session 9's warm start (session 10's start reaches another optimum of the
    relaxation, from which repair keeps the bound here without the last resort) every node's cores are full;
    m1 ran 1 + 1 + 3 instances where its need is 3 (n3's 3 carry 36.07 req/s, 0.066 above two at rho_max; the
    swap that frees one falls 4.5e-5 req/s short). Step 4's last resort rejects the least loaded last
    instance's rate (solver.queue_reject): m1 serves with 1 + 1 + 2, n3's freed cores go to m0's rejected
    stream (its pool there is open), and the served rate is the same; with that step off the bound breaks."""
    from solver import queue_dual, queue_warm

    for switch in (queue_warm, "INNER"), (queue_warm, "EXACT_BOUNDS"), (queue_dual, "FEASIBLE_BASIS"):
        monkeypatch.setattr(*switch, False)
    monkeypatch.setattr(queue_dual, "CAP_LEVEL", False)
    monkeypatch.setattr(queue_warm, "POLISH", False)  # session 9's KKT point from the column generation at 1e-5
    monkeypatch.setattr(queue_warm, "GAP", 1e-5)
    ids = [f"n{j}" for j in range(4)]
    nodes = tuple(Node(i, 2048.0, 2048.0, 100.0, cores=c) for i, c in zip(ids, (3.0, 1.0, 1.0, 3.0), strict=True))
    nodes = (dataclasses.replace(nodes[0], concurrency=3.0), *nodes[1:])
    reqs = tuple(
        Request(f"m{m}", dict(zip(ids, map(float, rtt), strict=True)), dict.fromkeys(ids, 2.0), f"c{i}", rate)
        for i, (m, rtt, rate) in enumerate(FULL_CORES)
    )
    snap = Snapshot(nodes, tuple(Model(f"m{k}", 100.0, 1.0, {"default": 20.0}) for k in range(3)), reqs)
    snap = snap if slots else equivalent_without_slots(snap)
    _, pools = integer_part(snap, Mode.MODE2, False)
    check(pools)
    k = pools.q.base.model_names.index("m1")
    assert pools.counts()[:, k].tolist() == [1, 0, 1, 2]
    assert pools.rejected.sum() == pytest.approx(147.0 - 144.0, abs=1e-3)  # 0.9 x (54 + 18 + 18 + 54) served
    monkeypatch.setattr(queue_repair, "SHED_BY_REJECTING", False)
    _, off = integer_part(snap, Mode.MODE2, False)
    assert spread_violations(off) == ["m1 on class default: 5 instances > 3 needed + 1"]
    assert off.rejected.sum() == pytest.approx(pools.rejected.sum(), abs=1e-3)


# --- input from strangers -------------------------------------------------------------------------------------


def test_snapshot_concurrency_is_bounded_and_round_trips() -> None:
    raw = {"id": "n", "mem_available_mb": 100.0, "mem_total_mb": 200.0, "compute": 1.0}
    m = [{"name": "m", "mem_mb": 1.0, "compute": 1.0}]
    for good in (1, 2.5, 1024):
        snap = Snapshot.from_dict({"nodes": [{**raw, "concurrency": good}], "models": m, "requests": []})
        assert snap.nodes[0].concurrency == float(good)
        assert Snapshot.from_dict(snap.to_dict()).nodes[0].concurrency == float(good)
    assert Snapshot.from_dict({"nodes": [raw], "models": m, "requests": []}).nodes[0].concurrency is None
    for bad in (0.999, 0, -1, 1024.5, 1e300, float("nan"), float("inf"), "4", True, [2]):
        with pytest.raises(SnapshotError, match="concurrency"):
            Snapshot.from_dict({"nodes": [{**raw, "concurrency": bad}], "models": m, "requests": []})


def test_a_peers_reported_concurrency_is_clipped_to_the_snapshots_bounds() -> None:
    assert (placement.MIN_CONCURRENCY, placement.MAX_CONCURRENCY) == (
        snapshot.MIN_CONCURRENCY,
        snapshot.MAX_CONCURRENCY,
    )
    base = {"node_id": "n", "mem_available_mb": 1000, "mem_total_mb": 2000, "compute": 4, "instances": [], "cores": 4}
    for bad in (0.5, 0, -1, 1025, 1e9, float("nan"), float("inf"), "x", None, True, [1], 10**400):
        assert placement.parse_node_report({**base, "concurrency": bad}, {"models": {}}).concurrency is None
    for good in (1, 4, 1024):
        assert placement.parse_node_report({**base, "concurrency": good}, {"models": {}}).concurrency == float(good)
    for cores in (None, 1e9, "x"):  # no plausible core count: the concurrency counts for nothing (slots <= cores)
        report = placement.parse_node_report({**base, "cores": cores, "concurrency": 1024}, {"models": {}})
        assert report.cores is None and report.concurrency is None


@pytest.mark.parametrize("value", ["-1", "0.5", "1025", "inf", "nan"])
def test_the_instance_concurrency_setting_is_validated(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_INSTANCE_CONCURRENCY": value})
    assert err.value.key == "instance_concurrency"
    for ok in ("0", "1", "4", "1024"):
        s = load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_INSTANCE_CONCURRENCY": ok})
        assert s.instance_concurrency == float(ok)


# --- the simulation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("c", "cores"), [(1, 1.0), (2, 2.0), (3, 3.0), (3, 8.0), (4, np.inf)])
def test_one_instance_with_c_slots_and_enough_cores_is_kiefer_wolfowitz(c: int, cores: float) -> None:
    """Both simulations give every request the FIFO-c time exactly (to float residue), exp and constant service."""
    rng = np.random.default_rng(c)
    n = 3000
    arrival = np.sort(rng.uniform(0.0, 30.0, n))  # 100 req/s
    for service in (rng.exponential(0.025, n), np.full(n, 0.025)):
        want = kiefer_wolfowitz_ms(arrival, service, c)
        inst = np.zeros(n, dtype=np.int64)
        got = shared_sojourn_ms(arrival, inst, service, np.zeros(1, int), np.array([cores]), np.array([c]))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-7)
        _, events = event_sojourn_ms(arrival, service, Fixed(inst), np.zeros(1, int), np.array([cores]), np.array([c]))
        np.testing.assert_allclose(events, want, rtol=1e-9, atol=1e-7)
    if c > 1:  # the checker sees a wrong slot count: one slot is not FIFO-c
        one = shared_sojourn_ms(arrival, inst, service, np.zeros(1, int), np.array([cores]), np.array([1]))
        assert not np.allclose(one, want, rtol=1e-6, atol=1e-6)


def test_mmc_mean_sojourn_matches_erlang_c_within_sampling_error() -> None:
    """One instance, 2 slots, 2 cores, lam 80, mu 50 (rho 0.8): mean sojourn 1/mu + C / (c mu - lam), batch means."""
    rng = np.random.default_rng(7)
    c, lam, mu, n = 2, 80.0, 50.0, 80_000
    arrival = np.cumsum(rng.exponential(1 / lam, n))
    service = rng.exponential(1 / mu, n)
    out = shared_sojourn_ms(arrival, np.zeros(n, np.int64), service, np.zeros(1, int), np.array([2.0]), np.array([c]))
    want = 1000.0 * (1 / mu + erlang_c(c, lam / mu) / (c * mu - lam))  # 55.6 ms
    batches = out[n // 10 :].reshape(20, -1).mean(axis=1)
    se = batches.std(ddof=1) / math.sqrt(len(batches))
    assert abs(batches.mean() - want) < 4 * se + 0.01 * want
    # the one-slot queue at the same load (rho 1.6) is unstable: far above
    assert (
        out.mean()
        < 0.2 * shared_sojourn_ms(arrival, np.zeros(n, np.int64), service, np.zeros(1, int), np.array([2.0])).mean()
    )


def test_two_slots_on_one_core_share_it() -> None:
    """Two 10 ms requests arriving together at a two-slot instance on one core both finish at 20 ms (processor
    sharing), on two cores at 10 ms; a one-slot instance serves them in turn (10, 20)."""
    arrival, work = np.array([0.0, 0.0]), np.full(2, 0.010)
    inst, one = np.zeros(2, np.int64), np.zeros(1, int)
    np.testing.assert_allclose(shared_sojourn_ms(arrival, inst, work, one, np.array([1.0]), np.array([2])), [20, 20])
    np.testing.assert_allclose(shared_sojourn_ms(arrival, inst, work, one, np.array([2.0]), np.array([2])), [10, 10])
    np.testing.assert_allclose(shared_sojourn_ms(arrival, inst, work, one, np.array([2.0]), np.array([1])), [10, 20])
    _, ev = event_sojourn_ms(arrival, work, Fixed(inst), one, np.array([1.0]), np.array([2]))
    np.testing.assert_allclose(ev, [20, 20])


def test_the_workloads_concurrency_reaches_solver_and_simulation() -> None:
    w = Workload(clients=12, rate=5.0, throughput=50.0, cores=2.0, duration_s=10.0, node_mem_mb=4096, model_mem_mb=100)
    assert sim_slots(w) == 1 and lab_snapshot(w)[0].nodes[0].concurrency is None
    two = dataclasses.replace(w, concurrency=4)
    assert sim_slots(two) == 2 and lab_snapshot(two)[0].nodes[0].concurrency == 4.0
    assert sim_slots(dataclasses.replace(w, cores=0.0, concurrency=3)) == 3
    assert sim_slots(dataclasses.replace(w, cores=1.5, concurrency=4)) == 2
    for bad in (0, 1025, True, 2.5):
        assert "concurrency" in (dataclasses.replace(w, concurrency=bad).check() or "")  # type: ignore[arg-type]
    a, b = run(w, ("queue-p99",))[0], run(two, ("queue-p99",))[0]
    assert a.requests == b.requests and b.instances <= a.instances and b.rejected == 0


def test_the_agent_reports_one_request_at_a_time_unless_set() -> None:
    from agent.node import model_server_concurrency

    def concurrency(**overrides: float) -> float:
        return model_server_concurrency(load_settings(None, overrides={"cores": 4.0, **overrides}))

    assert concurrency() == 1.0  # the default: not guessed from the runtime
    assert concurrency(instance_concurrency=3.0) == 3.0
    assert concurrency(instance_concurrency=0.0) == 4.0  # 0: the node's cores
    assert concurrency(instance_concurrency=0.0, cores=0.5) == 1.0  # at least one


def test_the_planned_requests_at_an_instance_are_the_mmc_number_in_system() -> None:
    """The plan's planned_queue is what the agent's live in-flight count averages at any slot count (M/M/c L), so
    p2c does not read a multi-slot node as busier than planned (M/M/1 L at slots x mu read 1.15x at 2 slots)."""
    for c in range(1, 9):
        for rho in (0.0, 0.1, 0.5, 0.9, 0.999):
            expected = c * rho + erlang_c(c, c * rho) * rho / (1 - rho)
            assert requests_at_instance(rho, float(c)) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert requests_at_instance(0.7, 1.0) == 0.7 / (1.0 - 0.7)  # one slot: M/M/1 exactly, as before
    assert requests_at_instance(0.5, 2.4) == requests_at_instance(0.5, 2.0)  # fractional slots: rounded
    plan = solve(lab(2.0, 2.0), mode="2", objective="queue")
    q = build_queue_problem(build_problem(lab(2.0, 2.0), Mode.MODE2))
    site_rate = 60.0 / len(plan.details["spread"])  # the lab's six clients, grouped by RTT into sites
    lam = {n: sum(site_rate * s["shares"].get(n, 0.0) for s in plan.details["spread"]) for n in ("a", "b", "c")}
    assert len(plan.details["planned_queue"]) >= 2
    for node_id, models in plan.details["planned_queue"].items():
        rho = lam[node_id] / (plan.instances[node_id]["m"] * float(q.mu[0, 0]))  # mu: the instance's, 2 x 50
        mmc = 2 * rho + erlang_c(2, 2 * rho) * rho / (1 - rho)
        assert models["m"] == pytest.approx(mmc, abs=1e-4)  # the shares carry 5 digits
