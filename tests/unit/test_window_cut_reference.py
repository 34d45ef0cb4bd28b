"""The request window's cut kept across pages (agent/request_window.py: a heap per node, O(log clients) a row) holds
exactly what tidy12's cut (tests/unit/request_window_reference.py: a heap built from the node's clients every cut)
held: the same rows, in the same order, the same counts and bytes, after any pages, expiries, cuts and loads; in the
leader's window and in the solver worker's copy (agent/window_sync.py) replaying its journal."""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.placement import RequestRecord
from agent.request_window import RequestWindow
from agent.window_sync import JournaledWindow, WindowDelta, WorkerWindow, encode_delta, encode_reset
from tests.unit.request_window_reference import ReferenceWindow

CLIENTS = [f"c{i}" for i in range(4)] + [f"made-up-{i}" for i in range(8)]
RECORD = st.tuples(st.sampled_from(CLIENTS), st.integers(0, 400), st.integers(-12, 2))  # client, pad, stamp offset
PAGE = st.tuples(st.just("add"), st.sampled_from("abc"), st.lists(RECORD, min_size=1, max_size=30), st.integers(1, 6))
OPS = st.lists(
    st.one_of(PAGE, st.tuples(st.just("expire"), st.integers(0, 4)), st.just(("sync",)), st.just(("reset",))),
    max_size=60,
)


def page(records: list[tuple[str, int, int]], repeat: int, now: float) -> list[RequestRecord]:
    """A page: each record ``repeat`` times (a client's burst), stamped around ``now`` (some past the window)."""
    return [
        RequestRecord(now + dt + k / 10, "m", client + "x" * pad, {"a": 1.0}, "a", 2.0, 200)
        for client, pad, dt in records
        for k in range(repeat)
    ]


def state(w: RequestWindow | ReferenceWindow) -> tuple[object, ...]:
    """Everything the window holds and counts: its rows node by node and client by client, in order."""
    groups = [(node, list(rows)) for node, rows in w.records().groups]
    return groups, len(w), w.nbytes, w._count_of, w._bytes_of, w._client_bytes


def replay(mirror: ReferenceWindow, delta: WindowDelta) -> None:
    """The reference's copy replays the journal's events as the worker does (``WorkerWindow._replay``)."""
    for event in delta.events:
        if event[0] == "add":
            _, node, now, rows = event  # type: ignore[misc]
            mirror.add_rows(node, rows, now)
        else:
            mirror.expire(event[1])  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(1, 120), st.integers(0, 40_000))
def test_the_kept_heaps_cut_exactly_as_the_reference_in_the_window_and_the_workers_copy(
    ops: list[tuple[object, ...]], bound: int, budget: int
) -> None:
    """Random pages (bursts of up to 20 clients, stamps in and out of the window), expiries, journal hand-offs and
    resets, under a count and a byte bound small enough that both cut: after every step the leader's window equals
    the reference window given the same pages, and the worker's copy equals the reference's copy replaying the same
    journal (each from the same reset)."""
    leader = JournaledWindow(bound, 10.0, 2.0, budget)
    reference = ReferenceWindow(bound, 10.0, 2.0, budget)
    worker, mirror = WorkerWindow(), ReferenceWindow(bound, 10.0, 2.0, budget)
    now = 100.0
    for op in ops:
        if op[0] == "add":
            _, node, records, repeat = op
            batch = page(records, repeat, now)  # type: ignore[arg-type]
            assert leader.add(node, batch, now) == reference.add(node, batch, now)  # type: ignore[arg-type]
        elif op[0] == "expire":
            now += op[1]  # type: ignore[operator]
            leader.expire(now)
            reference.expire(now)
        else:
            delta = leader.take_delta()
            if op[0] == "reset" or delta.gap or worker.window is None:
                worker.apply(json.loads(encode_reset(leader.records(), delta.seq, leader.config())))
                mirror = ReferenceWindow(bound, 10.0, 2.0, budget)
                mirror.load_rows(reference.records().groups)
            else:
                worker.apply(json.loads(encode_delta(delta)))
                replay(mirror, delta)
            assert worker.window is not None and state(worker.window) == state(mirror)
        assert state(leader) == state(reference)
        assert len(leader) <= bound and leader.nbytes <= budget


@settings(max_examples=100, deadline=None)
@given(st.lists(PAGE, max_size=12), st.integers(1, 200), st.integers(1, 120), st.integers(0, 40_000))
def test_a_loaded_copy_under_tighter_bounds_cuts_as_the_reference(
    pages: list[tuple[str, str, list[tuple[str, int, int]], int]], bound: int, tighter: int, budget: int
) -> None:
    """A window loaded with another's rows under its own (tighter) bounds cuts them as the reference does: the
    heaps are made from the loaded clients, in the order they were loaded."""
    source = RequestWindow(bound, 10.0, 2.0, 10**9)
    for _, node, records, repeat in pages:
        source.add(node, page(records, repeat, 100.0), 100.0)
    copy, reference = RequestWindow(tighter, 10.0, 2.0, budget), ReferenceWindow(tighter, 10.0, 2.0, budget)
    copy.load_rows(source.records().groups)
    reference.load_rows(source.records().groups)
    assert state(copy) == state(reference)
    for _, node, records, repeat in pages[:3]:  # and pages after the load, cut from the loaded heaps
        batch = page(records, repeat, 101.0)
        copy.add(node, batch, 101.0)
        reference.add(node, batch, 101.0)
        assert state(copy) == state(reference)


def test_a_nodes_heap_stays_within_twice_its_clients() -> None:
    """Pages that touch the same clients again and again, each cutting: stale entries never pile up past the
    rebuild's bound (twice the node's clients and a margin), however many pages come."""
    w = RequestWindow(max_records=200, window_s=600.0, max_ahead_s=60.0, max_bytes=10**9)
    for t in range(2000):
        w.add("a", [RequestRecord(99.0, "m", f"c{(t + j) % 50}", {}, "a", 1.0, 200) for j in range(20)], now=100.0)
        if t < 10:
            continue  # the window fills first: no cut, no heap
        for heap in w._heaps["a"]:  # by rows (made on the first cut), by bytes (none: the bytes never bind)
            assert heap is None or len(heap.entries) + len(heap.changed) <= 2 * 50 + 64  # 50 clients at most
    assert len(w) == 200 and len(w._by_node["a"]) == 50


def test_a_client_left_smaller_by_an_expiry_is_still_cut_first_when_it_holds_the_most() -> None:
    """An expiry changes what a client holds without a page of its: the node's heaps must learn it (the client's
    entries from before the expiry are stale), or the client holding the most would never come up again. Here x's
    entries are made by a cut of bytes that takes q's row, not x's; x then loses its older rows to the clock and still
    holds the most rows when singletons push the node past the count."""
    windows = [RequestWindow(30, 10.0, 2.0, 20_000), ReferenceWindow(30, 10.0, 2.0, 20_000)]
    for w in windows:
        w.add("a", [RequestRecord(91.0, "m", "x", {}, "a", 1.0, 200)] * 20, now=100.0)
        w.add("a", [RequestRecord(99.0, "m", "x", {}, "a", 1.0, 200)] * 8, now=100.0)
        w.add("a", [RequestRecord(99.0, "m", "q" * 6000, {}, "a", 1.0, 200)] * 2, now=100.0)  # bytes cut: q's row
        assert Counter(r.client for r in w.records()) == {"x": 28, "q" * 6000: 1}
        w.expire(now=101.5)  # x holds its 8 newer rows
        w.add("a", [RequestRecord(101.0, "m", f"y{i}", {}, "a", 1.0, 200) for i in range(22)], now=101.5)
    assert state(windows[0]) == state(windows[1])
    assert Counter(r.client for r in windows[0].records())["x"] == 7  # the count's cut took x's row
