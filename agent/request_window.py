"""The leader's window of request records: bounded in age, in count and in bytes, and fair between the nodes that
logged them.

Records come from every member's request log, page by page, stamped by the peer's clock. A record is kept only
while its stamp lies within ``window_s`` before now and at most ``max_ahead_s`` after it (a peer's clock skew): a
NaN, far-future or long-past stamp is dropped on arrival, so it neither holds older records in the window nor
takes room from real ones. Past ``max_records`` in all, the nodes that logged the most lose their oldest first,
down to an equal share (water-filling): one member's flood of pages cannot push the others' records out. The same
holds for bytes: past ``max_bytes`` (each row's length plus ``ROW_OVERHEAD``, the rows' memory), the nodes holding
the most bytes lose their oldest rows down to an equal share of the budget. The count alone let 50,000 rows of up
to 8 KiB each hold ~400 MiB (twice: the solver worker keeps a copy); a node that sends records near the row limit
now fills its share of the budget, not the board's memory, and a node within its share of both keeps every record.

Records are kept packed, one ``bytes`` row each (agent/packed_records.py): a full window of 50,000 is a few MiB, not
~70; expiry and trimming read only the rows' stamps, and ``records()`` hands out a view that unpacks on reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable

from agent.packed_records import MAX_ROW_BYTES, RecordView, pack_record, row_ts
from agent.placement import RequestRecord

MAX_WINDOW_BYTES = 16 * 1024 * 1024  # the default budget: a full window of 50,000 lab records (ten nodes) is ~11 MiB
ROW_OVERHEAD = 48  # what holding a row costs beyond its length: the bytes object's header (33) and its deque slot


def held_bytes(rows: Collection[bytes]) -> int:
    """The memory ``rows`` take in a window, as its byte budget counts it."""
    return sum(map(len, rows)) + len(rows) * ROW_OVERHEAD


class RequestWindow:
    """Request records per logging node, within the window's age, count and byte bounds."""

    def __init__(
        self, max_records: int, window_s: float, max_ahead_s: float, max_bytes: int = MAX_WINDOW_BYTES
    ) -> None:
        self.max_records = max_records
        self.window_s = window_s
        self.max_ahead_s = max_ahead_s
        self.max_bytes = max_bytes
        self._by_node: dict[str, deque[bytes]] = {}  # packed rows (agent.packed_records), in arrival order
        self._bytes_of: dict[str, int] = {}  # node -> held_bytes of its rows
        self._size = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """The rows' memory as the byte budget counts it (at most ``max_bytes``)."""
        return self._bytes

    def bytes_of(self, node: str) -> int:
        """``node``'s share of ``nbytes``."""
        return self._bytes_of.get(node, 0)

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
        """Keep ``node``'s rows (already checked against the window) and trim to ``max_records`` and ``max_bytes``."""
        if kept:
            self._by_node.setdefault(node, deque()).extend(kept)
            added = held_bytes(kept)
            self._bytes_of[node] = self._bytes_of.get(node, 0) + added
            self._size += len(kept)
            self._bytes += added
            if self._size > self.max_records or self._bytes > self.max_bytes:
                self._trim()
        return len(kept)

    def expire(self, now: float) -> None:
        """Drop the records stamped outside the window at ``now`` (pages arrive out of stamp order)."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        for node, records in list(self._by_node.items()):
            kept = [row for row in records if oldest <= row_ts(row) <= newest]
            if len(kept) == len(records):
                continue  # nothing expired here: neither its rows nor its bytes change
            if kept:
                self._by_node[node] = deque(kept)
                self._bytes_of[node] = held_bytes(kept)
            else:
                del self._by_node[node], self._bytes_of[node]
        self._size = sum(len(d) for d in self._by_node.values())
        self._bytes = sum(self._bytes_of.values())

    def records(self) -> RecordView:
        """Every record kept, node by node in arrival order, each ``logged_by`` its node (unpacked on reading)."""
        return RecordView(self._by_node.items())

    def load_rows(self, groups: Iterable[tuple[str, list[bytes]]]) -> None:
        """Replace the window with these (node, rows) groups, as another window's ``records().groups`` (its rows are
        not checked again; its bounds are: a copy never holds more than its own ``max_records`` and ``max_bytes``)."""
        self._by_node = {node: deque(rows) for node, rows in groups if rows}
        self._recount()
        if self._size > self.max_records or self._bytes > self.max_bytes:
            self._trim()

    def clear(self) -> None:
        self._by_node.clear()
        self._bytes_of.clear()
        self._size = self._bytes = 0

    def _recount(self) -> None:
        self._bytes_of = {node: held_bytes(d) for node, d in self._by_node.items()}
        self._size = sum(len(d) for d in self._by_node.values())
        self._bytes = sum(self._bytes_of.values())

    def _trim(self) -> None:
        """Cut the largest nodes' oldest records down to an equal share, so that ``max_records`` hold in all (the
        room the share's rounding leaves goes one record each to the largest: more nodes than records keep some);
        then, the same way, the nodes holding the most bytes down to an equal share of ``max_bytes`` (whole rows: a
        node ends at most one row under its share)."""
        if self._size > self.max_records:
            cap = fair_cap(sorted(len(d) for d in self._by_node.values()), self.max_records)
            spare = self.max_records - sum(min(len(d), cap) for d in self._by_node.values())
            over = sorted(((n, d) for n, d in self._by_node.items() if len(d) > cap), key=lambda nd: len(nd[1]),
                          reverse=True)  # fmt: skip
            for i, (node, records) in enumerate(over):
                keep = cap + (1 if i < spare else 0)
                while len(records) > keep:
                    self._bytes_of[node] -= len(records.popleft()) + ROW_OVERHEAD
        if sum(self._bytes_of.values()) > self.max_bytes:
            cap = fair_cap(sorted(self._bytes_of.values()), self.max_bytes)
            for node, records in self._by_node.items():
                while self._bytes_of[node] > cap:
                    self._bytes_of[node] -= len(records.popleft()) + ROW_OVERHEAD
        self._by_node = {node: d for node, d in self._by_node.items() if d}
        self._bytes_of = {node: self._bytes_of[node] for node in self._by_node}
        self._size = sum(len(d) for d in self._by_node.values())
        self._bytes = sum(self._bytes_of.values())


def fair_cap(lengths: list[int], total: int) -> int:
    """The largest per-node cap L (water-filling) with sum(min(length, L)) <= ``total``; ``lengths`` ascending (of
    records or of bytes)."""
    left = total
    for i, length in enumerate(lengths):
        share = left // (len(lengths) - i)
        if length > share:
            return share
        left -= length
    return lengths[-1] if lengths else total
