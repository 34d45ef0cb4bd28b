"""Name lookups under a call's deadline (client/deadline.py ``Lookups``): bounded in time and in number.

The resolver here is a function that blocks until the test lets it go (``getaddrinfo`` on a resolver that never
answers); tests/service/test_client_deadline.py hangs the real ``getaddrinfo`` (a named pipe for /etc/hosts in a
namespace of the test's own)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpcore
import pytest

from client.deadline import KEPT_FOR_GIVEN, MAX_GIVEN, MAX_LOOKUPS, Lookups


class Resolver:
    """``getaddrinfo`` that blocks until ``release``; counts its calls; a name ending ``.bad`` does not exist."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def __call__(self, host: str, port: int, type: int = 0) -> list[Any]:  # (getaddrinfo's keyword)
        self.calls += 1
        self.gate.wait(30)
        if host.endswith(".bad"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, type, 6, "", ("10.9.0.1", port)), (socket.AF_INET, type, 6, "", ("10.9.0.1", port)),
                (socket.AF_INET6, type, 6, "", ("fd00::1", port, 0, 0))]  # fmt: skip


def test_a_lookup_that_hangs_costs_the_time_left_and_the_same_name_shares_it() -> None:
    resolver = Resolver()
    lookups = Lookups(resolve=resolver)
    began = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout):
        lookups.addresses("a.test", 80, 0.3)
    assert 0.25 < time.monotonic() - began < 2.0
    with pytest.raises(httpcore.ConnectTimeout):
        lookups.addresses("a.test", 80, 0.05)  # still running: waited on again, not started again
    assert resolver.calls == 1 and len(lookups) == 1
    resolver.gate.set()
    deadline = time.monotonic() + 5
    while len(lookups) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(lookups) == 0
    assert lookups.addresses("a.test", 80, 1.0) == ["10.9.0.1", "fd00::1"]  # in order, once each
    assert lookups.addresses("10.1.2.3", 80, 0.0) == ["10.1.2.3"]  # an address is not looked up
    assert lookups.addresses("::1", 80, 0.0) == ["::1"]
    with pytest.raises(httpcore.ConnectError):
        lookups.addresses("nobody.bad", 80, 1.0)


def _settled(lookups: Lookups) -> None:
    deadline = time.monotonic() + 5
    while len(lookups) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(lookups) == 0


def test_at_most_max_lookups_run_at_once_past_it_a_call_waits_for_a_slot_within_its_deadline() -> None:
    """review15c F2: past the limit a call failed at once ("16 name lookups already in flight" at 0.000 s of a 5 s
    deadline); now it waits for a slot within its deadline, and gets one when a lookup ends. (No slot kept for the
    user's names here: the next test.)"""
    resolver = Resolver()
    lookups = Lookups(resolve=resolver, kept=0)
    for i in range(MAX_LOOKUPS):
        with pytest.raises(httpcore.ConnectTimeout):
            lookups.addresses(f"m{i}.test", 80, 0.01)
    assert len(lookups) == MAX_LOOKUPS
    began = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout, match=r"no slot to look one-more\.test up"):
        lookups.addresses("one-more.test", 80, 0.3)
    assert 0.25 < time.monotonic() - began < 2.0  # the time left, no more
    assert resolver.calls == MAX_LOOKUPS  # no thread for it
    assert lookups.waiting() == (0, 0)  # nothing left queued by the call that gave up
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(lookups.addresses("late.test", 80, 10.0)))
    waiter.start()
    time.sleep(0.1)
    assert lookups.waiting() == (1, 1)
    resolver.gate.set()  # the hung lookups end: the queued one takes a slot
    waiter.join(10)
    assert got == [["10.9.0.1", "fd00::1"]]
    _settled(lookups)
    assert lookups.addresses("one-more.test", 80, 1.0) == ["10.9.0.1", "fd00::1"]


class HangsLearned(Resolver):
    """Names starting "m" (learned from /cluster answers) hang until ``release``; the others answer at once."""

    def __call__(self, host: str, port: int, type: int = 0) -> list[Any]:
        if host.startswith("m"):
            return super().__call__(host, port, type)
        return [(socket.AF_INET, type, 6, "", ("10.9.0.2", port))]


def test_the_last_slots_are_kept_for_the_names_the_user_gave() -> None:
    """review15d F6: 16 hung lookups of names learned from /cluster answers made the user's own jetson1.local
    fail with ConnectTimeout at 1.00 s of its 1 s deadline; the last KEPT_FOR_GIVEN slots are now its."""
    resolver = HangsLearned()
    lookups = Lookups(resolve=resolver)
    lookups.give(["jetson1.local", "10.1.2.3", ""])  # (an address is never looked up: not remembered)
    assert lookups.given() == 1
    for i in range(MAX_LOOKUPS + 4):
        with pytest.raises(httpcore.ConnectTimeout):
            lookups.addresses(f"m{i}.test", 80, 0.01)
    assert len(lookups) == MAX_LOOKUPS - KEPT_FOR_GIVEN  # the learned names hang in theirs
    with pytest.raises(httpcore.ConnectTimeout, match="no slot"):
        lookups.addresses("other.test", 80, 0.2)  # not the user's: no kept slot
    began = time.monotonic()
    assert lookups.addresses("jetson1.local", 80, 1.0) == ["10.9.0.2"]
    assert time.monotonic() - began < 0.5
    lookups.give(f"n{i}.test" for i in range(MAX_GIVEN + 10))  # each client adds its own: bounded
    assert lookups.given() == MAX_GIVEN
    with pytest.raises(httpcore.ConnectTimeout, match="no slot"):
        lookups.addresses("jetson1.local", 80, 0.1)  # the oldest forgotten
    assert lookups.addresses(f"n{MAX_GIVEN + 9}.test", 80, 1.0) == ["10.9.0.2"]
    with pytest.raises(ValueError):
        Lookups(kept=MAX_LOOKUPS)
    resolver.gate.set()
    _settled(lookups)


def test_a_lookup_is_shared_by_host_whatever_the_port() -> None:
    """review15c F2: shared by (host, port), one hanging name listed under 16 ports took all 16 slots; the user's
    own jetson1.local:8080 then failed. Now one lookup per host (port 0), whatever port each call connects to."""
    resolver = Resolver()
    lookups = Lookups(resolve=resolver)
    for port in range(1, MAX_LOOKUPS + 1):
        with pytest.raises(httpcore.ConnectTimeout):
            lookups.addresses("slow.test", port, 0.01)
    assert len(lookups) == 1 and resolver.calls == 1
    resolver.gate.set()
    assert lookups.addresses("slow.test", 8080, 1.0) == ["10.9.0.1", "fd00::1"]
    _settled(lookups)


def test_calls_that_give_up_on_a_hung_lookup_leave_nothing_behind() -> None:
    """review15c F3: each async call that timed out left a done-callback (its loop and future) on the shared
    future of a lookup that never ends: 1,000 calls, 1,000 callbacks, ~0.7 KB each. Now each call takes its
    wake-up out: after 1,000 timed-out calls (async and sync) on a hung name nothing waits; 1,000 calls on 1,000
    names queued behind hung ones leave no name queued."""
    resolver = Resolver()
    lookups = Lookups(resolve=resolver, kept=0)

    async def calls(hosts: list[str]) -> None:
        for host in hosts:
            with pytest.raises(httpcore.ConnectTimeout):
                await lookups.async_addresses(host, 80, 0.0005)

    asyncio.run(calls(["hung.test"] * 1000))
    for _ in range(100):
        with pytest.raises(httpcore.ConnectTimeout):
            lookups.addresses("hung.test", 80, 0.0005)
    assert lookups.waiting() == (0, 0) and len(lookups) == 1
    for i in range(MAX_LOOKUPS - 1):
        with pytest.raises(httpcore.ConnectTimeout):
            lookups.addresses(f"h{i}.test", 80, 0.0005)
    assert len(lookups) == MAX_LOOKUPS
    asyncio.run(calls([f"q{i}.test" for i in range(1000)]))
    assert lookups.waiting() == (0, 0)
    resolver.gate.set()
    _settled(lookups)
    assert resolver.calls == MAX_LOOKUPS  # the queued names no call waited for were never looked up


def test_the_async_lookup_waits_on_the_loop_at_most_the_time_left() -> None:
    resolver = Resolver()
    lookups = Lookups(resolve=resolver)

    async def go() -> tuple[float, list[str], float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        began = time.monotonic()
        with pytest.raises(httpcore.ConnectTimeout):
            await lookups.async_addresses("b.test", 80, 0.3)
        took = time.monotonic() - began
        resolver.gate.set()
        found = await lookups.async_addresses("b.test", 80, 5.0)
        task.cancel()
        return took, found, ticks

    took, found, ticks = asyncio.run(go())
    assert 0.25 < took < 2.0
    assert found == ["10.9.0.1", "fd00::1"]
    assert ticks >= 10  # the loop ran meanwhile
