"""The leader's window mirrored in the solver worker (agent.window_sync): same records and snapshot, bounded journal."""

from __future__ import annotations

import base64
import json
import marshal
import math
import random
from typing import Any

import pytest

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.packed_records import pack_record
from agent.placement import NodeReport, RequestRecord, build_snapshot
from agent.request_window import MAX_WINDOW_BYTES, held_bytes, view_bytes
from agent.window_sync import (
    CHUNK_BYTES,
    ENCODE_CHUNK,
    MAX_CHUNK_CHARS,
    BuildInputs,
    JournaledWindow,
    WindowConfig,
    WindowDelta,
    WindowSyncError,
    WorkerWindow,
    decode_rows,
    delta_parts,
    encode_delta,
    encode_reset,
    encode_rows,
    reset_parts,
)
from bench.window_memory_bench import maximal_record

CATALOGUE = parse_catalogue(builtin_catalogue_text(), "test")
MODELS = list(CATALOGUE.models)
NODES = ("a", "b", "c")


def record(rnd: random.Random, now: float) -> RequestRecord:
    """A plausible record, with now and then an implausible stamp (NaN, far ahead, long past) or a failure."""
    ts = rnd.choice([now - rnd.uniform(0, 70), now - rnd.uniform(0, 5), math.nan, now + 500.0, now - 1e6])
    rtts = {n: rnd.uniform(1, 40) for n in NODES if rnd.random() < 0.9}
    served = rnd.random() < 0.8
    return RequestRecord(ts, rnd.choice(MODELS), f"c{rnd.randrange(30)}", rtts, rnd.choice(NODES) if served else None,
                         rnd.uniform(1, 50) if served else None, rnd.choice([200, 200, 200, 503, 500]))  # fmt: skip


Round = tuple[tuple[RequestRecord, ...], WindowConfig, WindowDelta, float]


def rounds(seed: int, max_records: int = 100, max_bytes: int = MAX_WINDOW_BYTES) -> list[Round]:
    """A leader's window through rounds of pages and expiries (trimmed: ``max_records`` is small), a delta per round;
    with a small ``max_bytes``, trimmed by bytes too."""
    rnd = random.Random(seed)
    window = JournaledWindow(max_records, 300.0, 30.0, max_bytes)
    out = []
    now = 1000.0
    for _ in range(8):
        for _page in range(rnd.randrange(1, 5)):
            now += rnd.uniform(0, 3)
            window.add(rnd.choice(NODES), [record(rnd, now) for _ in range(rnd.randrange(0, 40))], now)
        now += rnd.uniform(0, 20)
        window.expire(now)
        out.append((window.records(), window.config(), window.take_delta(), now))
    return out


def inputs(now: float, objective: str = "queue-p99") -> BuildInputs:
    nodes = tuple(NodeReport(n, 2000.0, 4000.0, 100.0, "default", {MODELS[0]: 1}, cores=4.0) for n in NODES)
    return BuildInputs(nodes, CATALOGUE, now, objective, 60.0)


@pytest.mark.parametrize(("seed", "max_bytes"), [(s, MAX_WINDOW_BYTES) for s in range(6)] + [(6, 9000), (7, 12_000)])
def test_the_mirror_holds_the_leaders_records_and_builds_the_same_snapshot(seed: int, max_bytes: int) -> None:
    """The same records in the mirror, round after round, trimmed by count (100 records) or by bytes (9,000 and
    12,000 bytes bind before 100 records of ~150 bytes each)."""
    mirror = WorkerWindow()
    replayed = 0
    for i, (records, config, delta, now) in enumerate(rounds(seed, max_bytes=max_bytes)):
        reset = i == 0 or delta.gap  # as SolverWorker: a gap in the journal needs the whole window
        replayed += not reset
        message = encode_reset(records, delta.seq, config) if reset else encode_delta(delta)
        mirror.apply(json.loads(message))  # as it crosses the pipe
        assert mirror.records() == records
        assert mirror.window is not None and mirror.window.nbytes == view_bytes(records) <= max_bytes
        assert [r.logged_by for r in mirror.records()] == [r.logged_by for r in records]
        for objective in ("queue-p99", "thesis"):
            theirs = BuildInputs.from_json(json.loads(json.dumps(inputs(now, objective).to_json())))
            mine = build_snapshot(list(theirs.nodes), records, CATALOGUE, now, objective, 60.0)
            assert theirs.build(mirror.records()) == mine
    assert replayed >= 4


def _rows(records: Any) -> Any:
    return (row for _, rows in records.groups for row in rows)


def test_the_byte_budget_binds_in_the_rounds_above() -> None:
    """The byte-trimmed cases above are not the count-trimmed ones again: the same pages keep fewer records."""
    by_count, by_bytes = rounds(6)[-3][0], rounds(6, max_bytes=9000)[-3][0]
    assert len(by_bytes) < len(by_count) and held_bytes(list(_rows(by_count))) > 9000


def test_the_check_catches_a_mirror_that_misses_an_event() -> None:
    """The comparison above is not decoration: drop one expiry from a delta and the records differ (the rounds span
    more than the window, with no journal gap, so the expiry is what removes the old records)."""
    rnd = random.Random(7)
    window = JournaledWindow(1000, 60.0, 30.0)
    exact, missing = WorkerWindow(), WorkerWindow()
    for mirror in (exact, missing):
        mirror.apply(json.loads(encode_reset(window.records(), window.seq, window.config())))
    window.take_delta()
    now = 1000.0
    for _ in range(4):
        window.add(rnd.choice(NODES), [record(rnd, now) for _ in range(20)], now)
        now += 45.0
        window.expire(now)
        delta = window.take_delta()
        assert not delta.gap
        exact.apply(json.loads(encode_delta(delta)))
        events = tuple(e for e in delta.events if e[0] != "expire")
        missing.apply(json.loads(encode_delta(WindowDelta(delta.base, delta.seq, events))))
        assert exact.records() == window.records()
    assert missing.records() != window.records() and len(missing.records()) > len(window.records())


def test_a_delta_that_does_not_follow_is_refused_and_a_reset_recovers() -> None:
    steps = rounds(1)
    mirror = WorkerWindow()
    with pytest.raises(WindowSyncError, match="holds -1"):
        mirror.apply(json.loads(encode_delta(steps[0][2])))  # a new worker holds nothing
    records, config, delta, _ = steps[1]
    mirror.apply(json.loads(encode_reset(records, delta.seq, config)))
    with pytest.raises(WindowSyncError, match="from"):
        mirror.apply(json.loads(encode_delta(steps[3][2])))  # skips round 2's events
    assert mirror.records() == ()  # refused: only a reset is accepted now
    records, config, delta, _ = steps[4]
    mirror.apply(json.loads(encode_reset(records, delta.seq, config)))
    assert mirror.records() == records
    mirror.apply(json.loads(encode_delta(steps[5][2])))
    assert mirror.records() == steps[5][0]


def test_malformed_window_messages_are_refused() -> None:
    mirror = WorkerWindow()
    for bad in (
        {"seq": 1, "config": [10, 60.0], "reset": []},
        {"seq": 1, "config": [10, 60, 30], "reset": []},  # no byte budget
        {"seq": 1, "config": [10, 60, 30, 4096], "reset": [["a", [[1]]]]},
        {"seq": 1, "config": [10, 60, 30, 4096], "reset": [["a", ["not base64!"]]]},
        {"seq": 1, "config": [10, 60, 30, 4096], "reset": [["a", ["AAAA"]]]},  # base64, not a marshalled list
    ):
        with pytest.raises(WindowSyncError, match="malformed"):
            mirror.apply(bad)
    mirror.apply({"seq": 1, "config": [10, 60, 30, 4096], "reset": []})
    with pytest.raises(WindowSyncError, match="unknown window event"):
        mirror.apply({"base": 1, "seq": 2, "events": [["drop"]]})


def test_the_journal_is_bounded_by_the_windows_record_count_and_a_gap_forces_a_reset() -> None:
    window = JournaledWindow(100, 60.0, 30.0)
    rec = RequestRecord(1000.0, MODELS[0], "c", {"a": 1.0}, "a", 5.0, 200)
    for _ in range(30):
        window.add("a", [rec] * 7, 1000.0)
        assert window.journal_records() <= 100
    delta = window.take_delta()
    assert delta.gap and delta.seq == 30
    assert sum(len(e[3]) for e in delta.events if e[0] == "add") <= 100  # type: ignore[misc]
    window.add("a", [rec] * 7, 1000.0)
    follow = window.take_delta()
    assert not follow.gap and follow.base == 30 and follow.seq == 31
    window.clear()
    assert window.take_delta().gap  # nothing to replay a clear from


def test_the_journal_is_bounded_by_the_windows_byte_budget_too() -> None:
    """Pages of maximal rows fill the byte budget long before the record count: past it the journal is dropped (a
    gap: the mirror gets the whole window, which is bounded), so the serving process holds at most the budget twice."""
    budget = 200_000
    window = JournaledWindow(10_000, 600.0, 30.0, budget)
    wide = maximal_record(1000.0, MODELS[0])
    for _ in range(30):
        window.add("a", [wide] * 3, 1000.0)
        assert window.journal_bytes() <= budget and window.nbytes <= budget
    delta = window.take_delta()
    assert delta.gap and delta.seq == 30
    assert held_bytes([row for e in delta.events if e[0] == "add" for row in e[3]]) <= budget  # type: ignore[misc]
    window.add("a", [wide] * 3, 1000.0)
    follow = window.take_delta()
    assert not follow.gap and follow.seq == 31 and window.config()[3] == budget


def test_chunks_are_bounded_in_bytes_and_a_longer_one_is_refused() -> None:
    wide = [pack_record(maximal_record(1000.0, MODELS[0])) for _ in range(100)]
    narrow = [pack_record(record(random.Random(i), 1000.0)) for i in range(ENCODE_CHUNK + 5)]
    for rows in (wide, narrow, wide[:1], []):
        chunks = json.loads(encode_rows(rows))
        assert decode_rows(chunks) == rows
        for chunk in chunks:
            part = marshal.loads(base64.b64decode(chunk))
            assert len(part) <= ENCODE_CHUNK and (sum(map(len, part)) <= CHUNK_BYTES or len(part) == 1)
            assert len(chunk) <= MAX_CHUNK_CHARS
    assert len(json.loads(encode_rows(wide))) == 4  # 100 rows of ~7.9 KiB: 33 to a chunk of 256 KiB
    assert len(json.loads(encode_rows(narrow))) == 2  # 1,005 short rows: cut at 1,000
    too_long = base64.b64encode(marshal.dumps(wide[:40])).decode()
    with pytest.raises(ValueError, match="at most"):
        decode_rows([too_long])


def test_a_message_is_encoded_in_pieces_of_at_most_a_chunk() -> None:
    """The worker is sent a message piece by piece as it is encoded (agent.solver_worker): no piece is longer than a
    chunk, so the serving process never holds a whole window's text; the pieces make the message."""
    window = JournaledWindow(10_000, 600.0, 30.0, 3 << 20)
    for node in NODES:
        window.add(node, [maximal_record(1000.0, MODELS[0])] * 120, 1000.0)
    window.expire(1000.0)
    records, delta = window.records(), window.take_delta()
    for parts, whole in ((reset_parts(records, delta.seq, window.config()), encode_reset(records, delta.seq,
                          window.config())), (delta_parts(delta), encode_delta(delta))):  # fmt: skip
        pieces = list(parts)
        assert "".join(pieces) == whole and len(whole) > 8 * MAX_CHUNK_CHARS
        assert max(len(p) for p in pieces) <= MAX_CHUNK_CHARS + 2  # a chunk, its quotes and a comma


def test_the_journal_bounds_events_not_only_records_and_skips_empty_pages() -> None:
    """Empty pages change nothing (not journaled); expiries weigh one each: 10,000 of them while no solve drains the
    journal cannot grow it past the window's bound (the review's 200,000 empty adds held 31 MB)."""
    window = JournaledWindow(100, 60.0, 30.0)
    for i in range(10_000):
        window.add("a", [], 1000.0 + i)
        window.expire(1000.0 + i)
        assert window.journal_records() <= 100
    delta = window.take_delta()
    assert delta.gap and len(delta.events) <= 100
    assert all(e[0] == "expire" for e in delta.events)
