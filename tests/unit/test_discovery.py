"""Pure parts of discovery: TXT building/parsing/update policy and the membership state machine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.discovery.membership import Membership, MembershipConfig, parse_peer_state
from agent.discovery.txt import TXT_LIMIT, build_txt, encoded_size, parse_txt, should_update
from agent.errors import PeerError


def txt(**kw: Any) -> dict[str, str]:
    args: dict[str, Any] = dict(node_id="n1", port=8400, cluster="c0ffee", catalogue_version="v1", models=["a", "b"],
                                mem_total_mb=4096, mem_available_mb=2000, gpu_load=10.0, term=3)  # fmt: skip
    args.update(kw)
    return build_txt(**args)


def test_txt_round_trip() -> None:
    t = txt()
    advert = parse_txt({k.encode(): v.encode() for k, v in t.items()})
    assert (advert.node_id, advert.port, advert.models, advert.term) == ("n1", 8400, ("a", "b"), 3)
    assert advert.mem_available_mb == 2000 and advert.gpu_load == 10


@given(st.lists(st.text("abcdefghij_", min_size=1, max_size=64), max_size=200))
def test_txt_always_fits(models: list[str]) -> None:
    t = txt(models=models)
    assert encoded_size(t) <= TXT_LIMIT
    advert = parse_txt(t)
    assert advert.models is None or set(advert.models) == set(models)


def test_long_model_list_becomes_a_digest() -> None:
    t = txt(models=[f"model_{i:03d}" for i in range(100)])
    assert "m" not in t and len(t["md"]) == 16
    assert parse_txt(t).models is None


def test_update_policy() -> None:
    base = txt()
    assert should_update(None, base, 0, 0)
    assert not should_update(base, txt(models=["a"]), last_at=10.0, now=10.5)  # at most once a second
    assert should_update(base, txt(models=["a"]), last_at=10.0, now=11.0)
    assert should_update(base, txt(term=4), 0, 5)
    assert not should_update(base, txt(gpu_load=14.0), 0, 5)  # under a 5-point step
    assert should_update(base, txt(gpu_load=15.0), 0, 5)
    assert not should_update(base, txt(mem_available_mb=2100), 0, 5)  # under 5 % of total
    assert should_update(base, txt(mem_available_mb=2300), 0, 5)
    assert should_update(base, txt(gpu_load=None), 0, 5)


@pytest.mark.parametrize(
    ("props", "words"),
    [
        ({"id": "n1", "port": "8400", "pv": "9"}, "protocol version"),
        ({"id": "", "port": "8400", "pv": "1"}, "node id"),
        ({"id": "a.b", "port": "8400", "pv": "1"}, "node id"),
        ({"id": "n1", "port": "99999", "pv": "1"}, "malformed"),
        ({"id": "n1", "port": "x", "pv": "1"}, "malformed"),
        ({"id": "n1", "port": "1", "pv": "1", "ma": "lots"}, "malformed"),
        ({"id": "n1", "port": "1", "pv": "1", "junk": "x" * 2000}, "oversized"),
        ({b"id": b"\xff\xfe", b"port": b"1", b"pv": None}, "protocol version"),
    ],
)
def test_bad_txt_is_rejected(props: dict[Any, Any], words: str) -> None:
    with pytest.raises(PeerError, match=words):
        parse_txt(props)


def state(node_id: str = "p", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"node_id": node_id, "api_url": f"http://{node_id}:8400", "peer_port": 8401,
                         "endpoints": {"m": ["http://x:1"]},
                         "mem_available_mb": 100, "mem_total_mb": 200, "gpu_load": None, "cpu_load": 5,
                         "node_class": "orin", "compute": 100, "term": 2, "leader": None}  # fmt: skip
    d.update(kw)
    return d


@pytest.mark.parametrize(
    "garbage",
    [None, [], "ok", {"node_id": 3}, state(api_url="ftp://x"), state(endpoints=[1]), state(endpoints={"m": [3]}),
     state(term=-1), state(term="2"), state(mem_available_mb="x"), state(cpu_load=float("nan")), state(leader=5),
     state(term=2**64), state(mem_total_mb=1e400), state(cpu_load=float("inf")), state(priority=True),
     state(endpoints={"m\n": ["http://x:1"]}), state(endpoints={"m": ["http://x:1"] * 17}), state(peer_port=0),
     state(endpoints={f"m{i}": [] for i in range(300)}), state(node_id="a.b"), state(api_url="http://" + "x" * 300)],
)  # fmt: skip
def test_garbage_heartbeats_are_rejected(garbage: Any) -> None:
    with pytest.raises(PeerError):
        parse_peer_state(garbage)


def test_heartbeat_from_the_wrong_node() -> None:
    with pytest.raises(PeerError, match="expected node"):
        parse_peer_state(state("q"), expected_id="p")


CFG = MembershipConfig(heartbeat_interval_s=0.5, suspect_after_s=1.0, dead_after_s=2.0, dead_probe_interval_s=2.0,
                       forget_after_s=60)  # fmt: skip


def test_life_cycle_alive_suspect_dead_back() -> None:
    m = Membership("me", CFG)
    assert m.advertised("p", "http://p:8400", "p", now=0, peer_url="https://p:8401") == []
    assert m.members() == []  # an advert is a hint: not a member until it answers authentically
    assert m.due_heartbeats(0) == [("p", "https://p:8401")]
    m.heartbeat_sent("p", 0, "https://p:8401")
    assert m.due_heartbeats(0.3) == []
    [t] = m.heartbeat_ok("p", parse_peer_state(state()), now=0.1, peer_url="https://p:8401")
    assert t.new == "alive" and m.members()[0].status == "alive"
    assert m.members()[0].endpoints == {"m": ["http://x:1"]} and m.members()[0].peer_url == "https://p:8401"
    assert m.tick(1.0) == []
    [t] = m.tick(1.1)
    assert (t.old, t.new) == ("alive", "suspect")
    [t] = m.tick(2.1)
    assert (t.old, t.new) == ("suspect", "dead")
    m.heartbeat_sent("p", 2.1, "https://p:8401")
    assert m.due_heartbeats(3.0) == []  # dead peers are probed less often
    assert m.due_heartbeats(4.2) == [("p", "https://p:8401")]
    [t] = m.heartbeat_ok("p", parse_peer_state(state()), now=4.3, peer_url="https://p:8401")
    assert (t.old, t.new) == ("dead", "alive")


def admitted(m: Membership, node: str = "p", url: str = "u", now: float = 0.1) -> None:
    m.advertised(node, url, node, now, url)
    m.heartbeat_ok(node, parse_peer_state(state(node)), now, url)


def test_candidates_that_never_answer_are_never_members_and_are_dropped() -> None:
    m = Membership("me", CFG)
    for i in range(500):  # an mDNS flood of made-up nodes
        m.advertised(f"fake{i}", f"http://f{i}", f"f{i}", 0, f"https://f{i}")
    assert m.members() == [] and len(m.pending) == CFG.max_pending  # bounded
    m.tick(CFG.pending_ttl_s + 1)
    assert m.pending == {}


def test_forgotten_after_long_death() -> None:
    m = Membership("me", CFG)
    admitted(m)
    m.tick(2.2)
    assert m.members()[0].status == "dead"
    [t] = m.tick(63.0)
    assert t.new is None and m.members() == []


def test_graceful_leave_is_immediate_and_a_goodbye_only_probes() -> None:
    m = Membership("me", CFG)
    admitted(m)
    m.heartbeat_sent("p", 0.2, "u")
    m.probe("p")  # an mDNS goodbye: anyone can send one
    assert m.members()[0].status == "alive" and m.due_heartbeats(0.25) == [("p", "u")]
    [t] = m.left("p", 0.3)
    assert t.new == "dead" and t.reason == "left"
    assert m.left("p", 0.4) == []


def test_our_own_id_is_ignored_and_an_id_is_claimed_by_whoever_authenticates() -> None:
    m = Membership("me", CFG)
    assert m.advertised("me", "http://elsewhere", "x", 0) == []
    assert ("me", "http://elsewhere") in m.conflicts
    m.advertised("p", "http://evil", "evil", 0, "https://evil")  # a stranger advertises p first
    m.advertised("p", "http://p2", "p2", 0.1, "https://p2")  # then the real p
    m.heartbeat_ok("p", parse_peer_state(state()), 0.2, "https://p2")  # only the real p can answer
    assert [(x.node_id, x.peer_url) for x in m.members()] == [("p", "https://p2")]
    assert m.heartbeat_ok("p", parse_peer_state(state()), 0.3, "https://elsewhere") == []  # not a candidate


@given(st.lists(st.tuples(st.sampled_from(["ok", "tick", "leave", "adv"]), st.floats(0, 0.7)), max_size=60))
def test_dead_within_dead_after_of_the_last_heartbeat(events: list[tuple[str, float]]) -> None:
    m = Membership("me", CFG)
    now, last_ok = 0.0, None
    m.advertised("p", "u", "p", now, "u")
    for kind, dt in events:
        now += dt
        if kind == "ok":
            m.heartbeat_ok("p", parse_peer_state(state()), now, "u")
            last_ok = now
        elif kind == "leave":
            m.left("p", now)
        elif kind == "adv":
            m.advertised("p", "u", "p", now, "u")
        m.tick(now)
        recs = {r.node_id: r for r in m.members()}
        if "p" in recs and recs["p"].status == "alive":
            assert last_ok is not None and now - last_ok < CFG.dead_after_s
