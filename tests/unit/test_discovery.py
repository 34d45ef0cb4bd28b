"""Pure parts of discovery: TXT building/parsing/update policy and the state answer parser (SWIM: test_swim.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.discovery.swim_io import parse_peer_state
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


def test_members_show_a_members_own_loads_within_a_second_and_rebuild_no_more_often() -> None:
    import random

    import httpx

    from agent.discovery import swim as sw
    from agent.discovery.service import LOADS_REFRESH_S, Discovery
    from agent.identity import Identity
    from agent.peer_client import PeerClient
    from peerserve.wire import Loads
    from tests.unit.swim_sim import state_of, url_of

    now = [0.0]
    ident = Identity("a", "unit-cluster-token-0123456789", None)
    d = Discovery("a", 7000, "127.0.0.2", "127.0.0.2", lambda: None, PeerClient(ident, lambda url: None),  # type: ignore[arg-type,return-value]
                  httpx.AsyncClient(), sw.SwimConfig(), lambda: [], 7001, "c", use_mdns=False,
                  clock=lambda: now[0])  # fmt: skip
    b = sw.Swim("b", url_of(1), sw.SwimConfig(), random.Random(1))
    d.swim.core.hint("b", b.self_url, "", 0.0)
    d.swim.core.admitted("b", b.self_url, "", state_of(b), 0.0)
    assert d.members()[0].cpu_load == 0.0
    b.loads = Loads(900.0, 42.0)
    d.swim.core.received(b.message("ping", "a"), 0.1)  # b's own message: its loads now
    built = d._members_at
    assert d.members()[0].cpu_load == 0.0 and d._members_at == built  # loads alone: not rebuilt at once
    now[0] = LOADS_REFRESH_S
    assert (d.members()[0].cpu_load, d.members()[0].mem_available_mb) == (42.0, 900.0)
    rebuilt = d._members_at
    now[0] = 5.0
    d.members()
    assert d._members_at == rebuilt  # nothing changed since: no rebuild
