"""A request-log page on the peer plane fits in a peer answer (wire.MAX_BODY), however long its rows."""

from __future__ import annotations

import json

from agent.peer_api import fit_page
from peerserve import wire


def row(i: int, nodes: int) -> dict[str, object]:
    rtts = {f"node-{k:02d}": 1.5 + k for k in range(nodes)}
    return {"id": i, "ts": 1000.0 + i, "model": "half_plus_two", "client": f"phone-{i}", "rtt_ms": rtts,
            "node": "n1", "latency_ms": 0.8, "status": 200}  # fmt: skip


def test_a_full_page_of_long_rows_is_cut_to_fit_and_the_cursor_follows_the_last_row_sent() -> None:
    rows = [row(i, nodes=16) for i in range(1, wire.MAX_PAGE + 1)]  # ~2 MB as one page
    assert len(json.dumps(rows, separators=(",", ":"))) > wire.MAX_BODY  # uncut, the reader would refuse it
    kept, cursor = fit_page(rows, cursor=wire.MAX_PAGE)
    body = json.dumps({"node_id": "n1", "requests": kept, "next": cursor}, separators=(",", ":")).encode()
    assert len(body) <= wire.MAX_BODY and 0 < len(kept) < len(rows)
    assert cursor == kept[-1]["id"]  # the next page starts right after the last row sent: nothing lost
    page = wire.RequestPage.parse(json.loads(body), since=0)
    assert len(page.requests) == len(kept) and page.next == cursor


def test_a_page_that_fits_is_unchanged_and_one_row_always_goes() -> None:
    rows = [row(i, nodes=2) for i in range(1, 11)]
    assert fit_page(rows, cursor=42) == (rows, 42)
    huge = [row(1, nodes=64), row(2, nodes=64)]
    assert fit_page(huge, cursor=2, budget=100) == ([huge[0]], 1)
