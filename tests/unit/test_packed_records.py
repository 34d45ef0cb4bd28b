"""agent.packed_records: a window's records as one bytes row each, exactly the records they were; bounded rows."""

from __future__ import annotations

import gc
import json
import marshal
import math
import random
import tracemalloc

import pytest

from agent.packed_records import MAX_ROW_BYTES, PackedRtts, RecordView, check_rows, pack_record, row_ts, unpack_row
from agent.placement import RequestRecord, parse_request
from agent.request_window import CLIENT_OVERHEAD, RequestWindow


def records(n: int, seed: int = 0) -> list[RequestRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        served = rnd.random() < 0.7
        rtt = {f"n{j}": rnd.uniform(0, 60_000) for j in range(rnd.randrange(0, 12))}
        out.append(RequestRecord(1000.0 + rnd.random() * 60, rnd.choice(["m1", "m2", "ü-model"]), f"c{i % 97}", rtt,
                                 rnd.choice(["n0", "n1"]) if served else None, rnd.random() * 1e5 if served else None,
                                 rnd.choice([200, 404, 503]), None))  # fmt: skip
    return out


def test_a_row_unpacks_to_the_same_record_exactly() -> None:
    for r in [
        *records(300),
        RequestRecord(5e-324, "m", "c", {}, None, None, 0),
        RequestRecord(-0.0, "", "", {}, "", 0.0, 599),
    ]:
        back = unpack_row(pack_record(r), "a")
        assert back == r and back.logged_by == "a"
        assert math.copysign(1.0, back.ts) == math.copysign(1.0, r.ts)  # bit for bit, the sign of zero too
        assert row_ts(pack_record(r)) == r.ts and dict(back.rtt_ms) == dict(r.rtt_ms)


def test_garbage_rows_are_refused() -> None:
    for bad in (b"", b"12345678", b"\x00" * 8 + b"\xff\xff", b"\x00" * 8 + b"i\x01\x00\x00\x00"):
        with pytest.raises(ValueError, match="not a packed request record"):
            unpack_row(bad, None)
    with pytest.raises(ValueError, match="not packed RTTs"):
        dict(PackedRtts(b"\xff"))  # read only when looked at: then refused like a bad row
    with pytest.raises(ValueError, match="RTTs are not packed"):
        unpack_row(b"\x00" * 8 + marshal.dumps(("m", "c", {}, None, None, 200)), None)
    for rows in ([b"short"], [1, 2], "abc", [b"\x00" * 4]):
        with pytest.raises(ValueError, match="not a list"):
            check_rows(rows)


def test_a_view_equals_the_records_in_order_and_notices_a_difference() -> None:
    rs = [RequestRecord(r.ts, r.model, r.client, r.rtt_ms, r.node, r.latency_ms, r.status, "a") for r in records(50)]
    view = RecordView([("a", [pack_record(r) for r in rs])])
    assert (
        view == tuple(rs) and list(view) == rs and len(view) == 50 and view[3] == rs[3] and view[-2:] == tuple(rs[-2:])
    )
    assert view != tuple(rs[:-1]) and view != tuple(reversed(rs)) and view != "abc"
    changed = list(rs)
    changed[7] = RequestRecord(rs[7].ts, rs[7].model, rs[7].client, rs[7].rtt_ms, rs[7].node, 1.5, rs[7].status)
    assert view != tuple(changed)  # one latency differs: the comparison sees it


def test_a_row_past_the_bound_is_not_kept() -> None:
    w = RequestWindow(max_records=10, window_s=600.0, max_ahead_s=60.0)
    fat = RequestRecord(1000.0, "m", "c" * 10_000, {}, None, None, 200)
    assert len(pack_record(fat)) > MAX_ROW_BYTES
    assert w.add("a", [fat, records(1)[0]], 1000.0) == 1 and len(w) == 1
    wide = {f"node-{i:058d}": 1.0 for i in range(64)}  # the wire's widest record: 64 RTTs to 64-character ids
    assert len(pack_record(RequestRecord(1.0, "m" * 64, "c" * 128, wide, "n" * 64, 1.0, 200))) <= MAX_ROW_BYTES


def test_a_full_window_holds_a_fraction_of_the_records_objects() -> None:
    """The point of packing: 5,000 records with ten RTTs each as a gathered page parses them, held packed, take under
    a quarter of the parsed objects' heap (beside the window's list of rows per client)."""
    page = json.dumps([{"ts": r.ts, "model": r.model, "client": r.client, "rtt_ms": {f"n{j}": j + r.ts % 7 for j in
                        range(10)}, "node": r.node, "latency_ms": r.latency_ms, "status": r.status}
                       for r in records(5000, seed=1)])  # fmt: skip
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    objects = [parse_request(raw) for raw in json.loads(page)]
    held = tracemalloc.get_traced_memory()[0] - before
    w = RequestWindow(max_records=5000, window_s=600.0, max_ahead_s=60.0)
    w.add("a", objects, 1000.0)
    del objects
    packed = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(w) == 5000
    assert packed < held / 4 + 97 * CLIENT_OVERHEAD  # and each of the 97 clients' list of rows (~12 KB in all)


def _churn_strangers() -> int:
    """Heap growth (bytes) while 10,000 records of made-up names (~40 MB of text) pass a 100-record window.

    Half the records of twice the text each (was 20,000 of ~2 KB, base taken after 10 of 200 pages): the same ~40 MB
    passes, 100 windows' worth, and tracemalloc's cost is per allocation (5.9 -> 2.9 s CPU a run); growth measured
    1.9 MB either way, with the keep-every-string table 43.7 MB before, 40.5 MB now (the check: over 32 MB)."""
    w = RequestWindow(max_records=100, window_s=600.0, max_ahead_s=60.0)
    tracemalloc.start()
    base = 0
    for i in range(100):
        page = [RequestRecord(1000.0, f"model-{i}-{j}" * 4, f"client-{i}-{j}-" + "x" * 4000, {f"node-{i}-{j}": 1.0},
                              f"node-{i}-{j}", 1.0, 200) for j in range(100)]  # fmt: skip
        w.add("stranger", page, 1000.0)
        del page
        assert len(list(w.records())) == 100
        if i == 5:
            gc.collect()  # what earlier tests left for the collector is not this window's
            base = tracemalloc.get_traced_memory()[0]
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(w) == 100
    return grown


PILE_UP = 16_000_000  # bytes: ~38 MB of made-up text passes the window; a table that keeps it grows by all of it


def test_strangers_strings_do_not_pile_up_in_the_intern_table() -> None:
    """Interned ids are freed with the last row or record that uses them: the heap stays near where it was (the
    intern table's own resizing, ~1 MB, and whatever other threads of the process allocate meanwhile: 7.7 MB once
    in the whole suite), far under the text that passed."""
    assert _churn_strangers() < PILE_UP


def test_the_pile_up_check_catches_a_table_that_keeps_every_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not decoration: intern into a table that never lets go and the heap grows by the text."""
    kept: dict[str, str] = {}
    monkeypatch.setattr("agent.packed_records.intern", lambda s: kept.setdefault(s, s))
    assert _churn_strangers() > 2 * PILE_UP
