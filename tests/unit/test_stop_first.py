"""Replacing an outdated server on a board without memory for both (decisions.plan_reconcile / stop_first).

Make-before-break starts the new server beside the old one; on a full board that start fails and the old one keeps
serving forever. With the catalogue's sizes and the node's total the replacement starts only where it fits beside
every server still in memory; where none fits, the old one is stopped first (drained) and the new one starts once
it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.decisions import STOP_FIRST, Start, Step, Stop, drain_stops, memory_fits, plan_reconcile
from agent.node import NodeAgent
from agent.runtime.base import Instance
from agent.settings import load_settings


def inst(id_: str, model: str, started: float = 0.0, outdated: bool = False) -> Instance:
    return Instance(id_, model, f"http://x/{id_}", True, 1, started, outdated=outdated)


NEED = {"a": 600.0, "b": 300.0}


def test_a_full_board_stops_the_outdated_server_first_and_starts_the_new_one_when_it_is_gone() -> None:
    old = inst("old", "a", outdated=True)
    assert plan_reconcile({"a": 1}, [old], {}, 0.0, mem_need=NEED, mem_total_mb=1000) == [Stop("old", "a", STOP_FIRST)]
    assert plan_reconcile({"a": 1}, [], {}, 1.0, mem_need=NEED, mem_total_mb=1000) == [Start("a")]
    # room for both: make-before-break as before
    assert plan_reconcile({"a": 1}, [old], {}, 0.0, mem_need=NEED, mem_total_mb=1200) == [Start("a")]
    assert plan_reconcile({"a": 1}, [old], {}, 0.0) == [Start("a")]  # without sizes: as before
    # the stop is drained like any healthy server's: unpublished first, stopped drain_s later
    steps, draining = drain_stops([Stop("old", "a", STOP_FIRST)], {}, 0.0, 2.0)
    assert steps == [] and draining == {"old": 0.0}
    assert drain_stops([Stop("old", "a", STOP_FIRST)], draining, 2.0, 2.0)[0] == [Stop("old", "a", STOP_FIRST)]


def test_a_server_stopped_first_stays_the_one_stopped_first_when_another_model_goes_outdated() -> None:
    """Seen on a real Docker Engine (tests/service/test_docker_upgrade.py): a catalogue reload in the middle of one
    listing judged b's container by the old entry, a's by the new. a was stopped first; the next round saw both
    outdated and, choosing afresh, stopped b first too (the older): both models dark at once. The server being
    drained stays the one stopped first, and b waits for it."""
    a_old, b_old = inst("a0", "a", started=2.0, outdated=True), inst("b0", "b", started=1.0)
    kw = {"ready": {"a0", "b0"}, "mem_need": NEED, "mem_total_mb": 1000.0}
    assert plan_reconcile({"a": 1, "b": 1}, [a_old, b_old], {}, 0.0, **kw) == [Stop("a0", "a", STOP_FIRST)]
    b_old = inst("b0", "b", started=1.0, outdated=True)  # b goes outdated while a0 drains
    steps = plan_reconcile({"a": 1, "b": 1}, [a_old, b_old], {}, 0.5, **kw, draining={"a0"})
    assert steps == [Stop("a0", "a", STOP_FIRST)]
    assert plan_reconcile({"a": 1, "b": 1}, [b_old], {}, 1.0, **kw, draining={"a0"}) == [Start("a")]  # a0 gone
    a_new = inst("a1", "a", started=1.5)
    assert plan_reconcile({"a": 1, "b": 1}, [a_new, b_old], {}, 2.0, **kw) == []  # b waits for a1 to load
    ready = {"a1", "b0"}
    steps = plan_reconcile({"a": 1, "b": 1}, [a_new, b_old], {}, 3.0, ready=ready, mem_need=NEED, mem_total_mb=1000.0)
    assert steps == [Stop("b0", "b", STOP_FIRST)]  # then b's turn
    # two servers drained as stopped first (an agent that stopped both before this fix): one stays, one serves again
    both = plan_reconcile({"a": 1, "b": 1}, [a_old, b_old], {}, 4.0, **kw, draining={"a0", "b0"})
    assert both == [Stop("b0", "b", STOP_FIRST)]
    assert drain_stops(both, {"a0": 3.0, "b0": 3.0}, 4.0, 2.0) == ([], {"b0": 3.0})  # a0 back in endpoint answers


def test_other_servers_count_and_a_server_on_its_way_out_is_waited_for() -> None:
    old, b = inst("old", "a", outdated=True), inst("b1", "b")
    # b's 300 MB stays: a's new 600 MB does not fit beside old a and b in 1200 MB
    steps = plan_reconcile({"a": 1, "b": 1}, [old, b], {}, 0.0, ready={"old", "b1"}, mem_need=NEED, mem_total_mb=1200)
    assert steps == [Stop("old", "a", STOP_FIRST)]
    # ... but not while b1 is still loading (not ready): a new server on its way, the old one waits
    assert plan_reconcile({"a": 1, "b": 1}, [old, b], {}, 0.0, ready={"old"}, mem_need=NEED, mem_total_mb=1200) == []
    # b is no longer desired and drains: its memory comes back, so nothing is stopped first and nothing starts yet
    assert plan_reconcile({"a": 1}, [old, b], {}, 0.0, mem_need=NEED, mem_total_mb=1200) == [
        Stop("b1", "b", "not desired")
    ]
    assert plan_reconcile({"a": 1}, [old], {}, 1.0, mem_need=NEED, mem_total_mb=1200) == [Start("a")]  # b gone
    # a server stopped at once (exited) holds no memory: the start goes ahead beside old a
    dead = Instance("b2", "b", "http://x/b2", False, 1, 0.0)
    steps = plan_reconcile({"a": 1}, [old, dead], {}, 0.0, mem_need=NEED, mem_total_mb=1200)
    assert steps == [Stop("b2", "b", "exited"), Start("a")]


def test_replacements_start_as_many_as_fit_and_the_old_retire_one_per_ready_new_one() -> None:
    olds = [inst(f"o{k}", "b", started=k, outdated=True) for k in range(2)]
    need = {"b": 300.0}
    assert plan_reconcile({"b": 2}, olds, {}, 0.0, mem_need=need, mem_total_mb=1000) == [Start("b")]  # 3 x 300 fit
    new = inst("n0", "b", started=5)
    assert plan_reconcile({"b": 2}, [*olds, new], {}, 6.0, mem_need=need, mem_total_mb=1000) == []  # loading
    steps = plan_reconcile({"b": 2}, [*olds, new], {}, 7.0, ready={"n0"}, mem_need=need, mem_total_mb=1000)
    assert steps == [Stop("o0", "b", "outdated")]  # the retiring server's memory comes back: no start beside it yet
    steps = plan_reconcile({"b": 2}, [olds[1], new], {}, 8.0, ready={"n0"}, mem_need=need, mem_total_mb=1000)
    assert steps == [Start("b")]


def test_a_replacement_in_backoff_stops_nothing() -> None:
    old = inst("old", "a", outdated=True)
    assert plan_reconcile({"a": 1}, [old], {"a": 60.0}, 1.0, mem_need=NEED, mem_total_mb=1000) == []


def test_one_server_in_all_fits_whatever_its_size() -> None:
    """The node accepts one server of a model too big for it; replacing it is stop-first, then that one starts."""
    old = inst("old", "big", outdated=True)
    steps = plan_reconcile({"big": 1}, [old], {}, 0.0, mem_need={"big": 5000.0}, mem_total_mb=1000)
    assert steps == [Stop("old", "big", STOP_FIRST)]
    assert plan_reconcile({"big": 1}, [], {}, 1.0, mem_need={"big": 5000.0}, mem_total_mb=1000) == [Start("big")]


def test_counts_are_cut_by_arithmetic() -> None:
    """A zero-size model's count is bounded by nothing but the catalogue: no loop per server."""
    olds = [inst(f"o{k}", "tiny", outdated=True) for k in range(3)]
    n = 10**6
    steps = plan_reconcile({"tiny": n}, olds, {}, 0.0, mem_need={"tiny": 1e-4}, mem_total_mb=50.0)
    k = steps.count(Start("tiny"))
    assert 499_990 < k < 500_000 and not any(isinstance(s, Stop) for s in steps)
    assert memory_fits({"tiny": 3 + k}, {"tiny": 1e-4}, 50.0)  # the most that fit, by the node's own sum
    assert not memory_fits({"tiny": 3 + k + 1}, {"tiny": 1e-4}, 50.0)


def test_a_full_board_stops_one_outdated_server_a_round_and_the_others_keep_serving() -> None:
    """After an upgrade every server is outdated: stopping all of them first at once took every model down together
    (review13b F1). One stop a round, and none while a new server loads or a replacement fits."""
    need = {"a": 1500.0, "b": 1500.0}
    a1, b1 = inst("a1", "a", started=0.0, outdated=True), inst("b1", "b", started=1.0, outdated=True)
    steps = plan_reconcile({"a": 1, "b": 1}, [a1, b1], {}, 0.0, ready={"a1", "b1"}, mem_need=need, mem_total_mb=3900)
    assert steps == [Stop("a1", "a", STOP_FIRST)]  # the oldest only; b1 keeps serving
    steps = plan_reconcile({"a": 1, "b": 1}, [b1], {}, 1.0, ready={"b1"}, mem_need=need, mem_total_mb=3900)
    assert steps == [Start("a")]  # a's new one fits beside b1
    a2 = inst("a2", "a", started=1.0)
    steps = plan_reconcile({"a": 1, "b": 1}, [a2, b1], {}, 2.0, ready={"b1"}, mem_need=need, mem_total_mb=3900)
    assert steps == []  # a2 loading: b1 is not stopped, b's replacement waits
    steps = plan_reconcile({"a": 1, "b": 1}, [a2, b1], {}, 3.0, ready={"a2", "b1"}, mem_need=need, mem_total_mb=3900)
    assert steps == [Stop("b1", "b", STOP_FIRST)]  # a's new one serves: now b's turn


def simulate(desired: dict[str, int], running: list[Instance], need: dict[str, float], total: float) -> list[str]:
    """Reconcile rounds on a runtime where a start is ready by the next round and a stop is immediate (drain_s 0).
    Asserts every round's servers fit; returns the ids at the end."""
    ids = iter(range(10**6))
    ready = {i.id for i in running}
    for t in range(40):
        steps: list[Step] = plan_reconcile(
            desired, running, {}, float(t), ready=ready, mem_need=need, mem_total_mb=total
        )
        stopped = {s.instance_id for s in steps if isinstance(s, Stop)}
        running = [i for i in running if i.id not in stopped]
        running += [inst(f"n{next(ids)}", s.model, started=float(t)) for s in steps if isinstance(s, Start)]
        counts: dict[str, int] = {}
        for i in running:
            counts[i.model] = counts.get(i.model, 0) + 1
        assert memory_fits(counts, need, total), (t, counts)
        ready = {i.id for i in running}
    return sorted(i.id for i in running)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from("abc"), st.integers(1, 3), min_size=1),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 600), min_size=3),
    st.integers(300, 2000),
    st.data(),
)
def test_outdated_servers_are_all_replaced_and_the_board_is_never_over(
    desired: dict[str, int], need: dict[str, float], total: int, data: st.DataObject
) -> None:
    if not memory_fits(desired, need, total):
        return  # the node refuses such a set
    running = [
        inst(f"{m}{k}", m, started=float(k), outdated=data.draw(st.booleans()))
        for m, c in desired.items()
        for k in range(c)
    ]
    end = simulate(desired, running, need, float(total))
    assert not {i.id for i in running if i.outdated} & set(end)  # every outdated one replaced
    assert len(end) == sum(desired.values())


def test_the_node_says_once_which_server_it_stops_first(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overrides = {"node_id": "n", "data_dir": str(tmp_path / "n"), "discovery": False}
    agent = NodeAgent(load_settings(env={}, overrides=overrides))
    try:
        old = inst("old", "a", outdated=True)
        step = Stop("old", "a", STOP_FIRST)
        with caplog.at_level(logging.WARNING, logger="agent.node"):
            agent._say_stop_first([step], [old], NEED, 1000.0)
            agent._say_stop_first([step], [old], NEED, 1000.0)  # the drain's next rounds: said already
        said = [r.getMessage() for r in caplog.records if "before its replacement starts" in r.getMessage()]
        assert len(said) == 1 and "old (a)" in said[0] and "1000 MB cannot hold both" in said[0]
        agent._say_stop_first([], [], NEED, 1000.0)
        assert agent._stopped_first == set()  # gone servers are forgotten: bounded by what is listed
    finally:
        asyncio.run(agent.stop())
