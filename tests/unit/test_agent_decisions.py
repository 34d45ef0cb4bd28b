"""Pure decisions of the agent: endpoint choice, reconciliation, backoff, provisioning target."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.catalogue import valid_model_name
from agent.client_ids import parse_rtt_report as parse_rtts
from agent.decisions import (
    UNKNOWN_RTT_MS,
    Candidate,
    NodeRoom,
    Start,
    Stop,
    backoff_delay,
    best_per_model,
    plan_reconcile,
    provision_target,
    rank_endpoints,
    stuck_instances,
)
from agent.runtime.base import Instance


def cand(node: str, exec_ms: float = 1.0, load: float = 0.0, model: str = "m", url: str = "") -> Candidate:
    return Candidate(node, url or f"http://{node}:8501", model, exec_ms, load)


def test_lowest_estimated_latency_wins() -> None:
    ranked = rank_endpoints([cand("a", 10), cand("b", 2), cand("c", 5)], {"a": 1, "b": 20, "c": 1})
    assert [c.candidate.node for c in ranked] == ["c", "a", "b"]
    assert ranked[0].why() == {
        "rtt_ms": 1,
        "rtt_source": "client",
        "exec_ms": 5,
        "estimated_ms": 6,
        "load": 0,
    }


def test_ties_go_to_lower_load_then_node_id() -> None:
    ranked = rank_endpoints([cand("b", load=50), cand("a", load=50), cand("c", load=10)], {})
    assert [c.candidate.node for c in ranked] == ["c", "a", "b"]


def test_unmeasured_rtt_uses_default() -> None:
    [only] = rank_endpoints([cand("a", 3)], {})
    assert only.rtt_ms == UNKNOWN_RTT_MS and only.why()["rtt_source"] == "default"


def test_best_per_model() -> None:
    best = best_per_model([cand("a", 5, model="x"), cand("b", 1, model="x"), cand("a", 1, model="y")], {})
    assert {m: c.candidate.node for m, c in best.items()} == {"x": "b", "y": "a"}


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.floats(0, 100), st.floats(0, 100)), min_size=1, max_size=8))
def test_choice_is_never_beaten(entries: list[tuple[str, float, float]]) -> None:
    cands = [cand(n, e, load=l_, url=f"http://{i}") for i, (n, e, l_) in enumerate(entries)]
    ranked = rank_endpoints(cands, {"a": 3.0})
    assert all(ranked[0].total_ms <= c.total_ms + 1e-6 for c in ranked)


def inst(id_: str, model: str, running: bool = True, started: float = 0.0, outdated: bool = False) -> Instance:
    return Instance(id_, model, f"http://x/{id_}", running, 1, started, outdated=outdated)


def test_reconcile_starts_missing_and_stops_extra() -> None:
    steps = plan_reconcile(
        {"a": 2, "b": 1},
        [inst("1", "a"), inst("2", "b", started=1), inst("3", "b", started=2), inst("4", "c")],
        {},
        now=10,
    )
    assert Start("a") in steps and steps.count(Start("a")) == 1
    assert Stop("3", "b", "more than desired") in steps  # the newest extra goes
    assert Stop("4", "c", "not desired") in steps
    assert len(steps) == 3


def test_reconcile_is_idempotent_when_converged() -> None:
    assert plan_reconcile({"a": 1}, [inst("1", "a")], {}, now=0) == []


def test_exited_instance_is_cleaned_and_replaced() -> None:
    steps = plan_reconcile({"a": 1}, [inst("1", "a", running=False)], {}, now=0)
    assert steps == [Stop("1", "a", "exited"), Start("a")]


def test_instance_stuck_unready_is_replaced() -> None:
    steps = plan_reconcile({"a": 1}, [inst("1", "a")], {}, now=100, stuck={"1"})
    assert steps == [Stop("1", "a", "not ready in time"), Start("a")]


def test_a_server_that_was_ready_gets_the_timeout_from_its_last_good_probe() -> None:
    """review12d F2: a Triton up 151 s that missed one probe (a 3 s stall) was replaced at once."""
    up_long = inst("1", "a", started=0.0)
    assert stuck_instances([up_long], set(), {"1": 148.0}, now=151.0, timeout=60.0) == set()  # one missed probe
    assert stuck_instances([up_long], set(), {"1": 148.0}, now=208.0, timeout=60.0) == set()
    assert stuck_instances([up_long], set(), {"1": 148.0}, now=208.5, timeout=60.0) == {"1"}  # hung for 60 s
    assert stuck_instances([up_long], set(), {}, now=151.0, timeout=60.0) == {"1"}  # never ready: from its start


def test_stuck_counts_from_the_later_of_start_and_last_ready() -> None:
    restarted = inst("1", "a", started=100.0)  # a container restarted after its last good probe (at 50)
    assert stuck_instances([restarted], set(), {"1": 50.0}, now=159.0, timeout=60.0) == set()
    assert stuck_instances([restarted], set(), {"1": 50.0}, now=161.0, timeout=60.0) == {"1"}


def test_ready_and_exited_servers_are_never_stuck() -> None:
    servers = [inst("1", "a"), inst("2", "a", running=False), inst("3", "b")]
    assert stuck_instances(servers, {"1"}, {}, now=1000.0, timeout=60.0) == {"3"}


def test_an_outdated_server_is_replaced_make_before_break() -> None:
    """review12f F2: a container from an older agent is replaced: the new one first, the old one once it is ready."""
    old = inst("old", "a", outdated=True)
    assert plan_reconcile({"a": 1}, [old], {}, now=0) == [Start("a")]  # serves on while the new one starts
    new = inst("new", "a", started=5)
    assert plan_reconcile({"a": 1}, [old, new], {}, now=6) == []  # the new one is not ready yet
    assert plan_reconcile({"a": 1}, [old, new], {}, now=7, ready={"old", "new"}) == [Stop("old", "a", "outdated")]
    assert plan_reconcile({"a": 1}, [old], {"a": 60.0}, now=7) == []  # the new one failed: the old one stays


def test_outdated_servers_retire_one_per_ready_new_one() -> None:
    olds = [inst(f"o{k}", "a", started=k, outdated=True) for k in range(3)]
    assert plan_reconcile({"a": 3}, olds, {}, now=0) == [Start("a")] * 3
    news = [inst(f"n{k}", "a", started=10 + k) for k in range(3)]
    steps = plan_reconcile({"a": 3}, olds + news, {}, now=20, ready={"n0", "n2"})
    assert steps == [Stop("o0", "a", "outdated"), Stop("o1", "a", "outdated")]  # the oldest first
    assert plan_reconcile({"a": 2}, olds + news, {}, now=20, ready={"n0", "n1", "n2"}) == [
        Stop("n2", "a", "more than desired"),
        *[Stop(f"o{k}", "a", "outdated") for k in range(3)],
    ]
    assert plan_reconcile({}, [olds[0]], {}, now=0) == [Stop("o0", "a", "not desired")]


def test_backoff_holds_starts() -> None:
    assert plan_reconcile({"a": 1}, [], {"a": 5.0}, now=4.9) == []
    assert plan_reconcile({"a": 1}, [], {"a": 5.0}, now=5.0) == [Start("a")]


def test_backoff_delay_doubles_and_caps() -> None:
    assert [backoff_delay(n) for n in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_provision_target() -> None:
    me = NodeRoom("me", 100)
    assert provision_target(50, me, [NodeRoom("p", 500)])[0] == "me"
    assert provision_target(200, me, [NodeRoom("p", 300), NodeRoom("q", 500)])[0] == "q"
    node, reason = provision_target(1000, me, [NodeRoom("p", 300)])
    assert node is None and "1000 MB" in reason and "p with 300 MB" in reason


def test_parse_rtts() -> None:
    assert parse_rtts("n1=2.5, n2=4", None) == {"n1": 2.5, "n2": 4.0}
    assert parse_rtts(None, "n1:1,n3:2") == {"n1": 1.0, "n3": 2.0}
    assert parse_rtts("n1=2", "n1:3") == {"n1": 3.0}
    for bad in ("n1", "n1=abc", "=3", "n1=-1", "n1=nan", "n1=inf"):
        with pytest.raises(ValueError):
            parse_rtts(bad, None)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("half_plus_two", True), ("m.v2", True), ("A-1", True), ("../etc", False), ("a/b", False),
     ("", False), (".hidden", False), ("x" * 65, False), ("a..b", False), ("a b", False)],
)  # fmt: skip
def test_model_names(name: str, ok: bool) -> None:
    assert valid_model_name(name) is ok
