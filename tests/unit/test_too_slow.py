"""Service rates too slow to answer one request in time (issue 16: sliver instances at absurd-but-finite rates).

At the edge the catalogue refuses a figure past the proxy's 30 s (a clear error naming the key; a reload keeps
the last good catalogue); figures that reach the solver anyway (measured, a fraction of a core, a snapshot file)
start no instance on a pool too slow to answer, and the streams' rejection names the service time. With the
screen switched off the same checks fail (instances started that serve nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import catalogue as agent_catalogue
from agent.catalogue import CatalogueWatcher, parse_catalogue
from agent.errors import ConfigError
from agent.serving.upstream import UpstreamPool
from solver import too_slow
from solver.api import solve
from solver.plan import Plan
from solver.snapshot import Model, Node, Request, Snapshot

ENTRY = '[[models]]\nname = "m"\nimage = "i"\nmem_mb = 1\ncompute = 1\n'


def test_the_bound_is_the_proxys_timeout_in_both_places() -> None:
    assert too_slow.MAX_SERVICE_S == agent_catalogue.MAX_SERVICE_S == UpstreamPool().timeout


@pytest.mark.parametrize(
    ("figures", "key"),
    [
        ("exec_ms = { default = 4.0 }\nthroughput_rps = { default = 1e-3 }\n", "throughput_rps.default"),
        ("exec_ms = { default = 4.0 }\nthroughput_rps = { default = 5.0, nano = 0.02 }\n", "throughput_rps.nano"),
        ("exec_ms = { default = 4.0, nano = 40000 }\n", "exec_ms.nano"),
    ],
)
def test_the_catalogue_refuses_an_instance_slower_than_the_proxy_waits(figures: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"models\[0\]\.{key}: .* within 30 s") as err:
        parse_catalogue(ENTRY + figures, "t")
    assert "requests/s" in str(err.value)


def test_the_catalogue_takes_figures_at_the_bound() -> None:
    cat = parse_catalogue(ENTRY + "exec_ms = { default = 30000 }\nthroughput_rps = { x = 0.0334 }\n", "t")
    assert cat.models["m"].expected_throughput_rps("default") == pytest.approx(1 / 30)
    assert cat.models["m"].expected_throughput_rps("x") == pytest.approx(0.0334)


def test_a_reload_with_a_too_slow_figure_keeps_the_last_good_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    path.write_text(ENTRY + "exec_ms = { default = 4.0 }\n")
    watcher = CatalogueWatcher(path)
    good = watcher.current.version
    path.write_text(ENTRY + "exec_ms = { default = 4.0 }\nthroughput_rps = { default = 0.001 }\n\n")
    assert not watcher.poll()
    assert watcher.current.version == good and watcher.error is not None and "throughput_rps" in watcher.error


def cluster(throughput: dict[str, float], mem: tuple[float, float] = (2000.0, 2000.0), running: int = 0) -> Snapshot:
    """Four nodes (n0's memory ``mem[0]``, n0 running ``running`` instances, the others ``mem[1]``), one model."""
    ids = [f"n{j}" for j in range(4)]
    nodes = tuple(
        Node(n, mem[j > 0], 4000.0, 100.0, {"m0": running} if j == 0 and running else {}, node_class="c", cores=4.0)
        for j, n in enumerate(ids)
    )
    requests = tuple(
        Request("m0", {n: 5.0 + j for j, n in enumerate(ids)}, dict.fromkeys(ids, 20.0), client=f"c{c}", rate=40.0)
        for c in range(4)
    )
    return Snapshot(nodes, (Model("m0", 200.0, 1.0, throughput),), requests, objective="queue")


def _started(plan: Plan, node: str | None = None) -> int:
    return sum(c for n, models in plan.instances.items() if node in (None, n) for c in models.values())


@pytest.mark.parametrize("objective", ["queue", "queue-p99"])
@pytest.mark.parametrize("mode", ["1", "2"])
def test_every_node_too_slow_starts_nothing_and_names_why(mode: str, objective: str) -> None:
    plan = solve(cluster({"default": 1e-3}), mode=mode, objective=objective)
    assert _started(plan) == 0 and plan.served == 0 and len(plan.rejected) == 4
    assert all("'m0' takes 1e+03 s" in r.reason and "30 s" in r.reason for r in plan.rejected)


def test_with_the_screen_off_the_slivers_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case: instances started, no request served (what the test above would catch)."""
    monkeypatch.setattr(too_slow, "SCREEN", False)
    plan = solve(cluster({"default": 1e-3}), mode="2", objective="queue")
    assert _started(plan) >= 4 and plan.served == 0


@pytest.mark.parametrize("screen", [True, False])
def test_a_slow_node_starts_none_where_the_fast_ones_are_full(screen: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """n0 serves m0 at 0.01 req/s (100 s a request) with room to spare; n1-n3 hold one instance each. Screened, n0
    starts nothing and the rest is rejected naming the fast nodes; unscreened, n0 runs instances for ~0.02 req/s."""
    monkeypatch.setattr(too_slow, "SCREEN", screen)
    plan = solve(cluster({"default": 50.0, "n0": 0.01}, mem=(2000.0, 250.0)), mode="1", objective="queue-p99")
    assert _started(plan) - _started(plan, "n0") == 3
    if not screen:
        assert _started(plan, "n0") > 0
        return
    assert _started(plan, "n0") == 0 and plan.details["rejected_rps"] == pytest.approx(160.0 - 3 * 45.0, rel=0.01)
    assert plan.rejected and all("(n1, n2, n3)" in r.reason and "100 s" in r.reason for r in plan.rejected)


def test_running_instances_on_a_slow_pool_get_no_traffic() -> None:
    """Mode 1 keeps what runs (eviction's business), but none of the plan's rate goes to a pool that cannot answer."""
    plan = solve(cluster({"default": 50.0, "n0": 0.01}, mem=(2000.0, 250.0), running=2), mode="1", objective="queue")
    assert plan.instances["n0"] == {"m0": 2} and plan.details["idle_running"].get("n0") == {"m0": 2}
    assert all("n0" not in shares for shares in plan.shares)


def test_fast_pools_are_untouched() -> None:
    """No pool too slow: the screen changes nothing (the same plan with it off)."""
    snap = cluster({"default": 50.0}, mem=(250.0, 250.0))
    on = solve(snap, mode="2", objective="queue-p99")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(too_slow, "SCREEN", False)
        off = solve(snap, mode="2", objective="queue-p99")
    assert on.instances == off.instances and on.shares == off.shares and on.objective_ms == off.objective_ms


def _leaders_plan(peer_cores: float, peer_latency_ms: float | None) -> Plan:
    """The leader's round on what peers report: n0's /stats/node through the wire's parser (``peer_cores``) and,
    where given, 6 proxied requests on n0 that each took ``peer_latency_ms``; n1 and n2 sane (2 cores each)."""
    from agent.placement import RequestRecord, build_snapshot, parse_node_report
    from peerserve.wire import NodeStats

    text = ENTRY.replace('"m"', '"slow"') + "exec_ms = { default = 1000.0 }\n"  # 1 req/s per instance, per core
    cat = parse_catalogue(text, "t")
    reports = []
    for j, cores in enumerate((peer_cores, 2.0, 2.0)):
        kind = "odd" if j == 0 else "c"  # a class of its own: its measurements scale no other node's figure
        stats = NodeStats(f"n{j}", kind, 100.0, 4000.0, 4000.0, (), cores=cores).to_json()
        reports.append(parse_node_report(NodeStats.parse(stats).to_json(), {"models": {}}))
    rtts = {"n0": 1.0, "n1": 5.0, "n2": 6.0}
    records = [RequestRecord(float(t), "slow", "c", rtts, None, None, 200) for t in range(30)]
    if peer_latency_ms is not None:
        records += [RequestRecord(float(t), "slow", "c", rtts, "n0", peer_latency_ms, 200) for t in range(6)]
    snap = build_snapshot(reports, records, cat, 60.0, objective="queue-p99", window_s=60.0)
    return solve(Snapshot.from_dict(snap), mode="2")


@pytest.mark.parametrize(("cores", "latency"), [(1 / 64, None), (2.0, 60_000.0)])
def test_a_peers_figures_past_the_bound_start_nothing_there(cores: float, latency: float | None) -> None:
    """n0 reports 1/64 of a core (64 s a request) or logs 60 s requests (both within what the leader accepts from
    a peer): the nearest node gets no instance, the sane nodes serve the stream."""
    plan = _leaders_plan(cores, latency)
    assert _started(plan, "n0") == 0 and _started(plan) > 0 and plan.served == 1 and not plan.rejected
    sane = _leaders_plan(2.0, None)
    assert _started(sane, "n0") > 0  # the same round with n0 sane: the nearest node serves
