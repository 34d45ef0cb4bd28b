"""The workload simulation dispatches as the agent does (solver/agent_sim.py; issue 16, parts 2 and 3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import solver.agent_sim as agent_sim
from agent import decisions
from agent.decisions import Candidate, rank_endpoints, spread_ranked
from agent.serving.exec_times import SAMPLES, ExecTimes
from peerserve import dispatch
from solver.agent_sim import EXEC_SAMPLES, AgentDispatch, Fixed, event_sojourn_ms
from solver.api import solve
from solver.shared_cores import shared_sojourn_ms
from solver.workload import Workload, _arrivals, assigned_spread, fifo_sojourn_ms, lab_snapshot, run

LAB = Workload(rate=2.0, cores=2.0, throughput=50.0, node_mem_mb=4096.0, model_mem_mb=100.0, duration_s=30.0)


def random_queues(seed: int, n: int, instances: int, nodes: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0.0, n / 150.0, n))
    return arrival, rng.integers(0, instances, n), rng.exponential(0.02, n), np.arange(instances) % nodes


@pytest.mark.parametrize("cores", [2.0, np.inf])
def test_with_no_core_shared_the_event_run_is_lindleys_fifo_bit_for_bit(cores: float) -> None:
    arrival, instance, work, node_of = random_queues(1, 4000, 6, 3)  # 2 instances per node
    where, got = event_sojourn_ms(arrival, work, Fixed(instance), node_of, np.full(3, cores))
    assert np.array_equal(where, instance)
    assert np.array_equal(got, fifo_sojourn_ms(arrival, instance, work))


@pytest.mark.parametrize(("cores", "seed"), [(1.0, 2), (1.5, 3), (2.0, 4)])
def test_with_shared_cores_the_event_run_is_the_processor_sharing_run(cores: float, seed: int) -> None:
    arrival, instance, work, node_of = random_queues(seed, 4000, 12, 3)  # 4 instances per node
    _, got = event_sojourn_ms(arrival, work, Fixed(instance), node_of, np.full(3, cores))
    want = shared_sojourn_ms(arrival, instance, work, node_of, np.full(3, cores))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_a_rate_change_reprojects_the_busy_departures_by_hand() -> None:
    """One core, two instances: A alone for 1 ms (1 of its 2 ms done), both at half speed, A leaves at 3 ms,
    B (1 ms done) alone again and leaves at 4 ms; a rejected request (-1) is nan."""
    arrival, work = np.array([0.0, 0.001, 0.002]), np.array([0.002, 0.002, 0.001])
    where, got = event_sojourn_ms(arrival, work, Fixed(np.array([0, 1, -1])), np.array([0, 0]), np.array([1.0]))
    assert where.tolist() == [0, 1, -1]
    np.testing.assert_allclose(got[:2], [3.0, 3.0])
    assert np.isnan(got[2])


def test_where_the_rule_cannot_matter_both_dispatches_give_the_same_outcome() -> None:
    """One node that holds one instance: the agent's rule and the plan's uniform draw both send every request
    there, over the same arrivals and service times: equal to the last bit."""
    w = Workload(clients=6, rate=5.0, sites=2, nodes=1, node_mem_mb=300.0, model_mem_mb=300.0, duration_s=20.0)
    for cores in (0.0, 1.0):
        plan_run = run(dataclasses.replace(w, cores=cores, dispatch="plan"), ("queue", "nearest"))
        agent_run = run(dataclasses.replace(w, cores=cores, dispatch="agent"), ("queue", "nearest"))
        for a, b in zip(agent_run, plan_run, strict=True):
            assert dataclasses.replace(a, solve_ms=0.0) == dataclasses.replace(b, solve_ms=0.0)
            assert a.instances == 1 and a.rejected == 0 and a.requests > 500


def the_agents_pick(d: AgentDispatch, i: int, details: dict[str, object]) -> str:
    """What agent/serving/resolve.py answers for request i, given the simulated agent's state."""
    c = d.client[i]
    a = d.agent[c]
    est = d.estimate[a]
    cands = [Candidate(n, u, "m", est[d.node_ids.index(n)], 0.0) for n, u in d.endpoints]
    rtts = dict(zip(d.node_ids, d.rtt[c].tolist(), strict=True))
    ranked = rank_endpoints(cands, rtts)
    return spread_ranked(ranked, details, "m", rtts, d.draws[i], dict(d.live[a]), d.draws2[i], d.rule)[0].candidate.url


@pytest.mark.parametrize("placement", ["queue", "thesis", "least-loaded"])
def test_the_simulated_choice_is_the_agents_for_any_live_state(placement: str) -> None:
    snap, rtt = lab_snapshot(LAB)
    method, objective = {"queue": ("ipopt", "queue"), "thesis": ("ipopt", "thesis")}.get(
        placement, (placement, "thesis")
    )
    plan = solve(snap, method=method, mode="2", objective=objective)
    started = [min(plan.instances.get(f"n{j + 1}", {}).get("m", 0), 40) for j in range(3)]
    rng = np.random.default_rng(5)
    n = 400
    d = AgentDispatch(
        plan.details, ["n1", "n2", "n3"], started, rtt, rng.integers(0, 60, n), 20.0, rng.random(n), rng.random(n)
    )
    assert plan.details["spread"]  # every objective publishes its shares (thesis models: its assignments)
    for i in range(n):
        for a in range(3):  # a random state: in-flight counts (some absent) and execution estimates
            d.live[a] = {
                u: int(x) for (_, u), x in zip(d.endpoints, rng.integers(0, 4, len(d.endpoints)), strict=True) if x
            }
            d.estimate[a] = rng.uniform(10.0, 60.0, 3).round(rng.integers(0, 3)).tolist()
        want = the_agents_pick(d, i, plan.details)
        assert d.endpoints[d.choose(i, 0.0)][1] == want


def requests_per_instance(details: dict[str, object]) -> tuple[list[int], np.ndarray]:
    """The least-loaded plan's instances per node and where the agent's rule sends the lab's requests."""
    snap, rtt = lab_snapshot(LAB)
    plan = solve(snap, method="least-loaded", mode="2", objective="thesis")
    started = [plan.instances[f"n{j + 1}"]["m"] for j in range(3)]
    arrivals = _arrivals(dataclasses.replace(LAB, duration_s=10.0))
    client = np.concatenate([np.full(len(a), c) for c, a in enumerate(arrivals)])
    t = np.concatenate(arrivals)
    order = np.argsort(t, kind="stable")
    draws = np.random.default_rng(3).random((2, len(t)))
    d = AgentDispatch(details or plan.details, ["n1", "n2", "n3"], started, rtt, client[order], 20.0, *draws)
    where, _ = event_sojourn_ms(t[order], np.full(len(t), 0.02), d, np.repeat(np.arange(3), started), np.full(3, 2.0))
    return started, where


def test_a_thesis_model_plan_is_spread_over_its_instances_and_without_shares_one_per_node_works() -> None:
    """A baseline plan publishes its assignments as shares: its requests reach many of its instances. A
    summary without shares (an older leader's) leaves the ranking: each node's first instance takes all
    of that node's requests (the rest of the plan's instances idle), as before."""
    started, where = requests_per_instance({})
    assert sum(started) == 60 and len(set(where.tolist())) > 30
    started, where = requests_per_instance({"spread": []})
    firsts = set(np.concatenate([[0], np.cumsum(started)[:-1]]).tolist())
    assert set(where.tolist()) <= firsts


def test_the_execution_estimate_is_the_agents_median_of_recent_server_times() -> None:
    assert EXEC_SAMPLES == SAMPLES
    d = AgentDispatch({}, ["n1"], [1], np.array([[1.0]]), np.zeros(40, dtype=np.int64), 5.0, np.zeros(40))
    agent = ExecTimes()
    for i, ms in enumerate(np.random.default_rng(7).exponential(20.0, 40).tolist()):
        d.done(i, d.choose(i, 0.0), 0.0, ms)
        agent.record("n1", "m", ms)
        assert d.estimate[0][0] == agent.get(("n1", "m"))
    assert d.live == [{}]  # nothing left in flight: the URL is absent, as agent/serving/inflight.py counts


def test_the_agent_and_the_simulation_share_one_rule() -> None:
    for name in ("parse_spread", "site_shares", "SiteShares", "MAX_SPREAD_SITES", "UNKNOWN_RTT_MS"):
        assert getattr(decisions, name) is getattr(dispatch, name)
    assert (
        agent_sim.choose_endpoint is dispatch.choose_endpoint and decisions.choose_endpoint is dispatch.choose_endpoint
    )


def mean_queue_met(monkeypatch: pytest.MonkeyPatch, live: bool) -> float:
    """Mean requests the entry agent had in flight at the instance each request was sent to (queue plan)."""
    met: list[int] = []
    choose = AgentDispatch.choose

    def counted(self: AgentDispatch, i: int, now: float) -> int:
        before = dict(self.live[self.agent[self.client[i]]])
        k = choose(self, i, now)
        met.append(before.get(self.endpoints[k][1], 0))
        return k

    monkeypatch.setattr(AgentDispatch, "choose", counted)
    if not live:  # the property switched off: the plan's shares alone
        monkeypatch.setattr(
            agent_sim,
            "choose_endpoint",
            lambda e, s, p, q, d, r, i, f: dispatch.choose_endpoint(e, s, p, None, d, r, i, f),
        )
    run(dataclasses.replace(LAB, rate=3.0, duration_s=20.0), ("queue",))
    monkeypatch.undo()
    return float(np.mean(met))


def test_live_queues_steer_requests_to_shorter_queues_and_the_check_sees_it_switched_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_live, shares_only = mean_queue_met(monkeypatch, True), mean_queue_met(monkeypatch, False)
    assert with_live < 0.8 * shares_only


def test_assigned_dispatch_follows_the_plans_assignments_over_all_of_a_nodes_instances() -> None:
    """``--dispatch assigned``: a thesis-model plan published with its assignments as shares; each site's
    requests reach the nodes in the proportions of its clients' assignments, over many of a node's instances."""
    w = dataclasses.replace(LAB, duration_s=20.0)
    snap, rtt = lab_snapshot(w)
    plan = solve(snap, method="least-loaded", mode="2", objective="thesis")
    spread = assigned_spread(plan, w, rtt)
    assert len(spread) == w.sites and all(np.isclose(sum(s["shares"].values()), 1.0) for s in spread)
    started = [plan.instances[f"n{j + 1}"]["m"] for j in range(3)]
    arrivals = _arrivals(w)
    client = np.concatenate([np.full(len(a), c) for c, a in enumerate(arrivals)])
    t = np.concatenate(arrivals)
    order = np.argsort(t, kind="stable")
    client = client[order]
    details = {**plan.details, "spread": spread}
    d = AgentDispatch(details, ["n1", "n2", "n3"], started, rtt, client, 20.0, np.random.default_rng(1).random(len(t)))
    node_of = np.repeat(np.arange(3), started)
    where, _ = event_sojourn_ms(t[order], np.full(len(t), 0.02), d, node_of, np.full(3, 2.0))
    for s in range(w.sites):
        mine = where[client % w.sites == s]
        for node, share in spread[s]["shares"].items():
            assert np.mean(node_of[mine] == int(node[1:]) - 1) == pytest.approx(share, abs=0.05)
    assert len(set(where.tolist())) > 30  # not one instance per node


def test_assigned_dispatch_is_the_agents_now_that_every_plan_publishes_its_shares() -> None:
    w = dataclasses.replace(LAB, duration_s=10.0)
    agent = {o.placement: o for o in run(w, ("queue", "least-loaded"))}
    assigned = {o.placement: o for o in run(dataclasses.replace(w, dispatch="assigned"), ("queue", "least-loaded"))}
    for name in ("queue", "least-loaded"):
        assert dataclasses.replace(assigned[name], solve_ms=0.0) == dataclasses.replace(agent[name], solve_ms=0.0)


def test_the_departure_heap_is_bounded_and_compacting_it_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """20 instances on one core re-project every busy departure at each rate change: superseded entries
    pile up until they reach the top unless the heap is compacted; it stays under 2 x instances +
    HEAP_SLACK (checked at a slack of 8 too), with the same results."""
    arrival, instance, work, node_of = random_queues(6, 6000, 20, 1)
    want = shared_sojourn_ms(arrival, instance, work, node_of, np.array([1.0]))
    engines: list[agent_sim._Engine] = []

    class Watched(agent_sim._Engine):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            engines.append(self)

    monkeypatch.setattr(agent_sim, "_Engine", Watched)
    for slack in (agent_sim.HEAP_SLACK, 8):
        monkeypatch.setattr(agent_sim, "HEAP_SLACK", slack)
        _, got = event_sojourn_ms(arrival, work, Fixed(instance), node_of, np.array([1.0]))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
        assert engines[-1].peak <= 2 * 20 + slack + 1
    monkeypatch.setattr(agent_sim, "HEAP_SLACK", 10**9)  # the bound switched off: the heap outgrows it
    event_sojourn_ms(arrival, work, Fixed(instance), node_of, np.array([1.0]))
    assert engines[-1].peak > 2 * 20 + 8 + 1  # (226 here): the slack-8 bound above held by compacting
