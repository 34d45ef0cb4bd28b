"""The leader's window of request records: bounded in age and in count, and fair between the nodes that logged them.

Records come from every member's request log, page by page, stamped by the peer's clock. A record is kept only
while its stamp lies within ``window_s`` before now and at most ``max_ahead_s`` after it (a peer's clock skew): a
NaN, far-future or long-past stamp is dropped on arrival, so it neither holds older records in the window nor
takes room from real ones. Past ``max_records`` in all, the nodes that logged the most lose their oldest first,
down to an equal share (water-filling): one member's flood of pages cannot push the others' records out.

Records are kept packed, one ``bytes`` row each (agent/packed_records.py): a full window of 50,000 is a few MiB, not
~70; expiry and trimming read only the rows' stamps, and ``records()`` hands out a view that unpacks on reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from agent.packed_records import MAX_ROW_BYTES, RecordView, pack_record, row_ts
from agent.placement import RequestRecord


class RequestWindow:
    """Request records per logging node, within the window's age and count bounds."""

    def __init__(self, max_records: int, window_s: float, max_ahead_s: float) -> None:
        self.max_records = max_records
        self.window_s = window_s
        self.max_ahead_s = max_ahead_s
        self._by_node: dict[str, deque[bytes]] = {}  # packed rows (agent.packed_records), in arrival order
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, node: str, records: Iterable[RequestRecord], now: float) -> int:
        """Take ``node``'s records (marked as its word) whose stamps are plausible at ``now``; how many were kept."""
        return self._take(node, self.plausible(records, now))

    def add_rows(self, node: str, rows: Iterable[bytes], now: float) -> int:
        """As ``add``, for records already packed (a mirror replaying the leader's journal)."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        return self._take(node, [row for row in rows if oldest <= row_ts(row) <= newest and len(row) <= MAX_ROW_BYTES])

    def plausible(self, records: Iterable[RequestRecord], now: float) -> list[bytes]:
        """The records whose stamps are plausible at ``now``, packed (a row past ``MAX_ROW_BYTES`` left out)."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        rows = (pack_record(r) for r in records if oldest <= r.ts <= newest)  # NaN compares false
        return [row for row in rows if len(row) <= MAX_ROW_BYTES]

    def _take(self, node: str, kept: list[bytes]) -> int:
        """Keep ``node``'s rows (already checked against the window) and trim to ``max_records``."""
        if kept:
            self._by_node.setdefault(node, deque()).extend(kept)
            self._size += len(kept)
            if self._size > self.max_records:
                self._trim()
        return len(kept)

    def expire(self, now: float) -> None:
        """Drop the records stamped outside the window at ``now`` (pages arrive out of stamp order)."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        for node, records in list(self._by_node.items()):
            kept = [row for row in records if oldest <= row_ts(row) <= newest]
            if kept:
                self._by_node[node] = deque(kept)
            else:
                del self._by_node[node]
        self._size = sum(len(d) for d in self._by_node.values())

    def records(self) -> RecordView:
        """Every record kept, node by node in arrival order, each ``logged_by`` its node (unpacked on reading)."""
        return RecordView(self._by_node.items())

    def load_rows(self, groups: Iterable[tuple[str, list[bytes]]]) -> None:
        """Replace the window with these (node, rows) groups, as another window's ``records().groups`` (no checks)."""
        self._by_node = {node: deque(rows) for node, rows in groups if rows}
        self._size = sum(len(d) for d in self._by_node.values())

    def clear(self) -> None:
        self._by_node.clear()
        self._size = 0

    def _trim(self) -> None:
        """Cut the largest nodes' oldest records down to an equal share, so that ``max_records`` hold in all (the
        room the share's rounding leaves goes one record each to the largest: more nodes than records keep some)."""
        cap = fair_cap(sorted(len(d) for d in self._by_node.values()), self.max_records)
        spare = self.max_records - sum(min(len(d), cap) for d in self._by_node.values())
        over = sorted((d for d in self._by_node.values() if len(d) > cap), key=len, reverse=True)
        for i, records in enumerate(over):
            keep = cap + (1 if i < spare else 0)
            while len(records) > keep:
                records.popleft()
        self._by_node = {node: d for node, d in self._by_node.items() if d}
        self._size = sum(len(d) for d in self._by_node.values())


def fair_cap(lengths: list[int], total: int) -> int:
    """The largest per-node cap L (water-filling) with sum(min(length, L)) <= ``total``; ``lengths`` ascending."""
    left = total
    for i, length in enumerate(lengths):
        share = left // (len(lengths) - i)
        if length > share:
            return share
        left -= length
    return lengths[-1] if lengths else total
