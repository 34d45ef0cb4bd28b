"""A stranger's mDNS adverts on the LAN (review26b F2): made-up names by the thousand are a log line a minute, not a
line each, and an advert at a loopback address heard by an agent on a LAN address is ignored, counted and said once
(admitting it would make the agent connect to a port of its own host the stranger chose)."""

from __future__ import annotations

import logging

import httpx
import pytest

from agent.discovery import swim as sw
from agent.discovery.service import UNAUTHENTICATED_LOG_S, Discovery
from agent.discovery.txt import SERVICE_TYPE, cluster_id
from agent.identity import Identity
from agent.peer_client import PeerClient
from agent.peer_http import PeerHttpError
from tests.unit.test_discovery_ipv6 import TOKEN, props, state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def discovery(address: str, clock: Clock | None = None) -> Discovery:
    ident = Identity("victim", TOKEN, None)
    return Discovery("victim", 7000, address, address, lambda: state("victim"),
                     PeerClient(ident, lambda url: None), httpx.AsyncClient(), sw.SwimConfig(), lambda: [],
                     7001, cluster_id(TOKEN), use_mdns=False, clock=clock or Clock())  # fmt: skip


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agent.discovery.service"]


def test_failed_admissions_of_made_up_names_are_a_line_a_minute_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    d = discovery("10.9.0.2", clock)
    failed = PeerHttpError("connection refused")
    with caplog.at_level(logging.INFO, logger="agent.discovery.service"):
        for minute in range(3):
            for i in range(1000):  # the review's rate: ~150 a second, made-up names at one address
                d._admit_failed(sw.Admit(f"fake-{minute}-{i}", "https://10.9.0.66:7001", "10.9.0.66"), failed)
                clock.now += 0.006
            clock.now = 1000.0 + (minute + 1) * UNAUTHENTICATED_LOG_S
        d._admit_failed(sw.Admit("fake-0-0", "https://10.9.0.66:7001", "10.9.0.66"), failed)  # said once already
    lines = said(caplog)
    assert len(lines) == 3, lines  # one a minute, where there was one a name (3,000)
    assert "fake-0-0" in lines[0] and "other candidates" not in lines[0]
    assert lines[1].endswith("; 999 other candidates failed since the last such line")
    assert lines[2].endswith("; 999 other candidates failed since the last such line")
    assert len(d._said) <= 256


def test_one_misconfigured_board_is_said_once_not_every_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    d = discovery("10.9.0.2", clock)
    with caplog.at_level(logging.INFO, logger="agent.discovery.service"):
        for _ in range(10):  # a board with another token, retried for ten minutes
            d._admit_failed(sw.Admit("board-9", "https://10.9.0.9:7001", "10.9.0.9"), PeerHttpError("bad cert"))
            clock.now += UNAUTHENTICATED_LOG_S
    assert len(said(caplog)) == 1


def test_a_loopback_advert_heard_on_a_lan_address_is_ignored_counted_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = discovery("10.9.0.2")
    with caplog.at_level(logging.INFO, logger="agent.discovery.service"):
        for i, address in enumerate(["127.0.0.1", "127.0.0.53", "127.255.255.254"] * 100):
            d._advert(f"s{i}.{SERVICE_TYPE}", props(f"s{i}", 22), [address])
    assert d.mdns["loopback"] == 300 and d.mdns["hinted"] == 0 and not d.swim.core.candidates
    assert len(said(caplog)) == 1 and "loopback address" in said(caplog)[0]
    d._advert(f"board.{SERVICE_TYPE}", props("board", 7001), ["10.9.0.7"])  # a LAN peer: hinted as before
    assert [c.peer_url for c in d.swim.core.candidates.values()] == ["https://10.9.0.7:7001"]


def test_on_a_loopback_bed_a_loopback_advert_is_a_peer() -> None:
    d = discovery("127.0.0.2")  # the demo and the service tests: every agent at a 127.0.0.x address
    d._advert(f"b.{SERVICE_TYPE}", props("b", 7101), ["127.0.0.3"])
    assert [c.peer_url for c in d.swim.core.candidates.values()] == ["https://127.0.0.3:7101"]
    assert d.mdns["loopback"] == 0
