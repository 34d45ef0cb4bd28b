"""Pure bounds on client input: RTT reports, client ids per source address, client_rtt expiry."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.catalogue import valid_model_name
from agent.client_ids import (
    MAX_RECORDED_ID,
    MAX_RTT_NODES,
    BadClientInput,
    ClientIds,
    known_nodes_only,
    parse_rtt_report,
    scoped,
    valid_client_id,
)
from agent.store import Store
from peerserve import wire


def test_rtt_report_accepts_well_formed_entries() -> None:
    assert parse_rtt_report("n1=2.5, n2=4", None) == {"n1": 2.5, "n2": 4.0}
    assert parse_rtt_report(None, "n1:0,n-3_x:60000") == {"n1": 0.0, "n-3_x": 60000.0}
    assert parse_rtt_report("", "") == {}


@pytest.mark.parametrize(
    "bad",
    ["n1=nan", "n1=NaN", "n1=inf", "n1=-Infinity", "n1=1e400", "n1=" + "9" * 400, "n1=1e30", "n1=-0.5",
     "n1=60000.1", "n1", "=3", "n1=", "n1=abc", "n.1=2", "-n=2", "n1=2=3", "x" * 64 + "=1",
     ",".join(f"n{i}=1" for i in range(MAX_RTT_NODES + 1)), "n=1," + " " * 9000],
)  # fmt: skip
def test_rtt_report_refuses_overflow_nan_and_bad_names(bad: str) -> None:
    with pytest.raises(BadClientInput):
        parse_rtt_report(bad, None)


@given(st.text(max_size=200))
def test_rtt_report_never_raises_anything_but_bad_input(raw: str) -> None:
    try:
        out = parse_rtt_report(raw, raw.replace("=", ":"))
    except BadClientInput:
        return
    assert len(out) <= MAX_RTT_NODES and all(0 <= v <= 60_000 for v in out.values())


@pytest.mark.parametrize(
    ("name", "ok"),
    [("phone-7", True), ("a", True), ("user@host:1", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("phone\n", False), ("-x", False), ("a b", False), ("a/b", False), ("ä", False)],
)  # fmt: skip
def test_client_ids_are_matched_whole(name: str, ok: bool) -> None:
    assert valid_client_id(name) is ok


def test_model_names_are_matched_whole() -> None:
    assert valid_model_name("half_plus_two")
    assert not valid_model_name("half_plus_two\n")
    assert not valid_model_name("half_plus_two\nx")


def test_reports_about_unknown_nodes_are_dropped() -> None:
    assert known_nodes_only({"a": 1.0, "fake": 2.0}, {"a", "b"}) == {"a": 1.0}


def distinct_recorded(limiter: ClientIds, address: str, claimed: list[str], now: float) -> set[str]:
    """The ids the requests of ``claimed`` (all from ``address``) are recorded under."""
    return {limiter.resolve(address, c, now) for c in claimed}


def check_bounded(limiter: ClientIds, bound: int) -> None:
    """Invariant: 200 made-up ids from one host count as at most ``bound + 1`` clients."""
    recorded = distinct_recorded(limiter, "10.0.0.9", [f"fake-{i}" for i in range(200)], now=100.0)
    assert len(recorded) <= bound + 1, f"{len(recorded)} clients from one address"


def test_one_address_cannot_fake_demand() -> None:
    limiter = ClientIds(max_per_address=8, window_s=600)
    check_bounded(limiter, 8)
    recorded = distinct_recorded(limiter, "10.0.0.9", [f"fake-{i}" for i in range(200)], now=101.0)
    assert recorded == {*(f"fake-{i}" for i in range(8)), "10.0.0.9"}
    # Another host is not affected, and an id already held keeps working.
    assert limiter.resolve("10.0.0.10", "phone", 101.0) == "phone"
    assert limiter.resolve("10.0.0.9", "fake-3", 101.0) == "fake-3"


def test_the_checker_fails_when_the_bound_is_switched_off() -> None:
    with pytest.raises(AssertionError, match="200 clients"):
        check_bounded(ClientIds(max_per_address=10**9, window_s=600), 8)


def test_ids_expire_after_the_window_and_free_room() -> None:
    limiter = ClientIds(max_per_address=2, window_s=10)
    assert [limiter.resolve("h", c, 0.0) for c in ("a", "b", "c")] == ["a", "b", "h"]
    assert limiter.resolve("h", "c", 11.0) == "c"
    assert limiter.ids_of("h") == {"c"}


def test_no_claimed_id_means_the_address() -> None:
    limiter = ClientIds(max_per_address=2, window_s=10)
    assert limiter.resolve("h", None, 0.0) == "h" and limiter.resolve("h", "h", 0.0) == "h"
    assert limiter.ids_of("h") == set()


def test_the_address_table_is_bounded() -> None:
    limiter = ClientIds(max_per_address=2, window_s=600, max_addresses=100)
    for i in range(1000):
        limiter.resolve(f"10.0.{i // 256}.{i % 256}", "c", float(i))
    assert len(limiter) == 100
    assert limiter.ids_of("10.0.3.231") == {"c"} and limiter.ids_of("10.0.0.0") == set()


def test_client_rtt_rows_expire_and_are_capped(tmp_path: Path) -> None:
    store = Store(tmp_path, client_rtt_ttl_s=100, client_rtt_rows=500)
    for i in range(300):  # 300 requests, each from a new client reporting 5 nodes
        store.record_request(float(i), "m", f"c{i}", {f"n{k}": 1.0 for k in range(5)}, None, None, 200)
        store.flush()
    assert store.client_rtt_count() <= 500 * 1.1 + 5
    assert store.client_rtts("c299", now=299.0) == {f"n{k}": 1.0 for k in range(5)}
    assert store.client_rtts("c150", now=299.0) == {}  # reported 149 s ago: expired
    store.expire_client_rtts(now=299.0)
    assert store.client_rtt_count() == 5 * 100  # only reports of the last 100 s remain
    store.expire_client_rtts(now=1000.0)
    assert store.client_rtt_count() == 0
    store.close()


def test_the_agents_rtt_cache_forgets_expired_reports(tmp_path: Path) -> None:
    from agent.node import NodeAgent
    from agent.peers import NoPeers
    from agent.settings import Settings

    now = [1000.0]
    settings = Settings(node_id="n", data_dir=str(tmp_path), discovery=False, client_rtt_ttl_s=100)
    agent = NodeAgent(settings, peers=NoPeers(), clock=lambda: now[0])
    try:
        agent.store.record_request(now[0], "m", "phone", {"n": 3.0}, "n", None, 200)
        assert agent.client_rtts("phone", {"n": 3.0}) == {"n": 3.0}
        now[0] += 50
        assert agent.client_rtts("phone", {}) == {"n": 3.0}  # remembered within the TTL
        now[0] += 100
        assert agent.client_rtts("phone", {}) == {}  # reported 150 s ago: forgotten
    finally:
        agent.store.close()
        agent.metrics.close()


ADDRESSES = ["10.0.0.5", "10.0.0.9", "127.0.0.1", "fd00:1234:5678:9abc:def0:1234:5678:9abc", "unknown"]
ROW = {"id": 1, "ts": 1.0, "model": "m", "client": "", "rtt_ms": {}, "node": None, "latency_ms": None, "status": 200}


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}", fullmatch=True), st.sampled_from(ADDRESSES))
def test_a_recorded_client_is_scoped_by_its_address_and_fits_the_wire(claimed: str, address: str) -> None:
    name = scoped(claimed, address)
    assert len(name) <= MAX_RECORDED_ID and name.endswith("@" + address)
    assert all(scoped(claimed, other) != name for other in ADDRESSES if other != address)
    assert wire.RequestRow.parse({**ROW, "client": name}).client == name  # the leader's parser takes it


def test_an_address_is_recorded_as_itself_and_long_ids_stay_apart() -> None:
    assert scoped("10.0.0.5", "10.0.0.5") == "10.0.0.5" and scoped("10.0.0.5", "10.0.0.9") == "10.0.0.5@10.0.0.9"
    a, b = "x" * 127 + "a", "x" * 127 + "b"
    assert scoped(a, ADDRESSES[-1]) != scoped(b, ADDRESSES[-1])


def test_the_request_log_queue_is_bounded_while_writes_fall_behind(tmp_path: Path) -> None:
    store = Store(tmp_path, max_pending=100)
    for i in range(250):  # no flush in between: the writer is stuck
        store.record_request(float(i), "m", f"c{i}", {}, "n1", 1.0, 200)
    assert store.dropped == 150 and store.flush() == 100
    rows, _ = store.requests_since(0, 1000)
    assert [r.client for r in rows] == [f"c{i}" for i in range(150, 250)]  # the newest kept
