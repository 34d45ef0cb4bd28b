"""tidy12's request window (agent/request_window.py at f3d0c4b), kept as the reference the O(log clients) cut is
checked against: each cut here builds a heap of the node's clients above the water level (O(clients) per cut); the
window's own keeps its heaps across pages. Both must hold the same rows, in the same order, after any pages, expiries,
cuts and loads (tests/unit/test_window_cut_reference.py)."""

from __future__ import annotations

from collections.abc import Iterable
from heapq import heapify, heappop, heapreplace
from itertools import compress, count
from operator import neg

from agent.packed_records import MAX_ROW_BYTES, RecordView, pack_record, row_client, row_ts
from agent.placement import RequestRecord
from agent.request_window import (
    MAX_WINDOW_BYTES,
    ROW_OVERHEAD,
    Rows,
    client_cost,
    client_sizes,
    fair_cap,
    held_bytes,
)


class ReferenceWindow:
    """tidy12's RequestWindow (f3d0c4b) as it was: each cut builds its heap from the node's clients."""

    def __init__(
        self, max_records: int, window_s: float, max_ahead_s: float, max_bytes: int = MAX_WINDOW_BYTES
    ) -> None:
        self.max_records = max_records
        self.window_s = window_s
        self.max_ahead_s = max_ahead_s
        self.max_bytes = max_bytes
        self._by_node: dict[str, Rows] = {}
        self._count_of: dict[str, int] = {}  # node -> its rows
        self._bytes_of: dict[str, int] = {}  # node -> node_bytes of its rows
        self._client_bytes: dict[str, dict[str, int]] = {}  # node -> client -> its rows' bytes and client_cost
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
        return self._take(node, *self.plausible(records, now))

    def add_rows(self, node: str, rows: Iterable[bytes], now: float) -> int:
        """As ``add``, for records already packed (a mirror replaying the leader's journal: each row's client is read
        from it; ValueError on a row that is not a record)."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        kept = [row for row in rows if oldest <= row_ts(row) <= newest and len(row) <= MAX_ROW_BYTES]
        return self._take(node, list(map(row_client, kept)), kept)

    def plausible(self, records: Iterable[RequestRecord], now: float) -> tuple[list[str], list[bytes]]:
        """The clients and packed rows of the records whose stamps are plausible at ``now`` (a row past
        ``MAX_ROW_BYTES`` left out), as two lists: no pair held per record."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        kept = [r for r in records if oldest <= r.ts <= newest]  # NaN compares false
        rows = list(map(pack_record, kept))
        within = [len(row) <= MAX_ROW_BYTES for row in rows]
        return list(compress((r.client for r in kept), within)), list(compress(rows, within))

    def _take(self, node: str, clients_of: list[str], kept: list[bytes]) -> int:
        """Keep ``node``'s rows (already checked against the window), each of the client at its index in
        ``clients_of``, and trim to ``max_records`` and ``max_bytes``."""
        if kept:
            clients = self._by_node.setdefault(node, {})
            sizes = self._client_bytes.setdefault(node, {})
            added = held_bytes(kept)
            for client, row in zip(clients_of, kept, strict=True):
                rows = clients.get(client)
                if rows is None:
                    rows = clients[client] = []
                    sizes[client] = cost = client_cost(client)
                    added += cost
                rows.append(row)
                sizes[client] += len(row) + ROW_OVERHEAD
            self._count_of[node] = self._count_of.get(node, 0) + len(kept)
            self._bytes_of[node] = self._bytes_of.get(node, 0) + added
            self._size += len(kept)
            self._bytes += added
            if self._size > self.max_records or self._bytes > self.max_bytes:
                self._trim()
        return len(kept)

    def expire(self, now: float) -> None:
        """Drop the records stamped outside the window at ``now`` (pages arrive out of stamp order)."""
        oldest, newest = now - self.window_s, now + self.max_ahead_s
        for node, clients in list(self._by_node.items()):
            changed = False
            for client, rows in list(clients.items()):
                kept = [row for row in rows if oldest <= row_ts(row) <= newest]
                if len(kept) == len(rows):
                    continue  # nothing expired here
                changed = True
                if kept:
                    clients[client] = kept  # in its place: the clients' order (the cut's tie-break) holds
                else:
                    del clients[client]
            if changed:
                self._recount_node(node)
        self._totals()

    def records(self) -> RecordView:
        """Every record kept, node by node and client by client (each in arrival order), each ``logged_by`` its node
        (unpacked on reading)."""
        return RecordView((node, rows) for node, clients in self._by_node.items() for rows in clients.values())

    def load_rows(self, groups: Iterable[tuple[str, list[bytes]]]) -> None:
        """Replace the window with these (node, rows) groups, as another window's ``records().groups`` (in that
        order, so a copy's clients stand in the original's order; its rows' stamps are not checked again, their
        clients are read; its bounds are: a copy never holds more than its own ``max_records`` and ``max_bytes``)."""
        self._by_node = {}
        for node, rows in groups:
            for row in rows:
                self._by_node.setdefault(node, {}).setdefault(row_client(row), []).append(row)
        self._count_of, self._bytes_of, self._client_bytes = {}, {}, {}
        for node in list(self._by_node):
            self._recount_node(node)
        self._totals()
        if self._size > self.max_records or self._bytes > self.max_bytes:
            self._trim()

    def clear(self) -> None:
        self._by_node.clear()
        self._count_of.clear()
        self._bytes_of.clear()
        self._client_bytes.clear()
        self._size = self._bytes = 0

    def _recount_node(self, node: str) -> None:
        """Count ``node``'s rows and bytes again (after an expiry or a load); a node left with none is dropped."""
        clients = self._by_node[node]
        if clients:
            self._count_of[node] = sum(map(len, clients.values()))
            self._client_bytes[node] = dict(zip(clients, client_sizes(clients, by_bytes=True), strict=True))
            self._bytes_of[node] = sum(self._client_bytes[node].values())
        else:
            del self._by_node[node]
            for counts in (self._count_of, self._bytes_of, self._client_bytes):
                counts.pop(node, None)

    def _totals(self) -> None:
        self._size = sum(self._count_of.values())
        self._bytes = sum(self._bytes_of.values())

    def _trim(self) -> None:
        """Cut the largest nodes down to an equal share, so that ``max_records`` hold in all (the room the share's
        rounding leaves goes one record each to the largest: more nodes than records keep some); then, the same way,
        the nodes holding the most bytes down to an equal share of ``max_bytes`` (whole rows: a node ends at most one
        row and its client under its share). Each node is cut by ``_cut``: its largest clients first."""
        if self._size > self.max_records:
            cap = fair_cap(sorted(self._count_of.values()), self.max_records)
            spare = self.max_records - sum(min(n, cap) for n in self._count_of.values())
            over = sorted((n for n, c in self._count_of.items() if c > cap), key=self._count_of.__getitem__,
                          reverse=True)  # fmt: skip
            for i, node in enumerate(over):
                self._cut(node, cap + (1 if i < spare else 0), by_bytes=False)
            self._totals()
        if self._bytes > self.max_bytes:
            cap = fair_cap(sorted(self._bytes_of.values()), self.max_bytes)
            for node in [n for n, b in self._bytes_of.items() if b > cap]:
                self._cut(node, cap, by_bytes=True)
            self._totals()

    def _cut(self, node: str, keep: int, by_bytes: bool) -> None:
        """Cut ``node`` to ``keep`` rows (or bytes) one row at a time: the oldest of the client holding the most (of
        equals, the one seen first), so a client's flood costs its own rows and the node's other clients keep
        theirs while they hold less. Only clients above the water level (``fair_cap`` of the clients' holdings)
        can be the most while the node is over ``keep``: a heap of those, built by C-level iteration from the clients'
        sizes (kept per client, bytes included), then O(rows cut x log clients)."""
        clients = self._by_node[node]
        sizes = list(self._client_bytes[node].values()) if by_bytes else list(map(len, clients.values()))
        level = fair_cap(sorted(sizes), keep)
        heap = list(compress(zip(map(neg, sizes), count(), clients), map(level.__lt__, sizes)))
        heapify(heap)
        rows_left, nbytes = self._count_of[node], self._bytes_of[node]
        sizes_now = self._client_bytes[node]
        dropped: dict[str, int] = {}  # client -> rows cut from its front
        while (nbytes if by_bytes else rows_left) > keep and heap:
            size, i, client = heap[0]
            rows, k = clients[client], dropped.get(client, 0)
            cost = len(rows[k]) + ROW_OVERHEAD
            dropped[client] = k = k + 1
            rows_left, nbytes = rows_left - 1, nbytes - cost
            sizes_now[client] -= cost
            if k == len(rows):
                nbytes -= sizes_now[client]  # its last row: the client's own cost goes with it
                heappop(heap)
            else:
                heapreplace(heap, (size + (cost if by_bytes else 1), i, client))
        for client, k in dropped.items():
            if k == len(clients[client]):
                del clients[client], sizes_now[client]
            else:
                del clients[client][:k]
        if clients:
            self._count_of[node], self._bytes_of[node] = rows_left, nbytes
        else:
            del self._by_node[node], self._count_of[node], self._bytes_of[node], self._client_bytes[node]
