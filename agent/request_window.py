"""The leader's window of request records: bounded in age, in count and in bytes, and fair between the nodes that
logged them and, within a node, between its clients.

Records come from every member's request log, page by page, stamped by the peer's clock. A record is kept only
while its stamp lies within ``window_s`` before now and at most ``max_ahead_s`` after it (a peer's clock skew): a
NaN, far-future or long-past stamp is dropped on arrival, so it neither holds older records in the window nor
takes room from real ones. Past ``max_records`` in all, the nodes that logged the most are cut down to an equal share
(water-filling): one member's flood of pages cannot push the others' records out. The same holds for bytes: past
``max_bytes`` (each row's length plus ``ROW_OVERHEAD``, the rows' memory, and ``client_cost`` for each client a
node holds rows of), the nodes holding the most bytes are cut down to an equal share of the budget. The count alone
let 50,000 rows of up to 8 KiB each hold ~400 MiB (twice: the solver worker keeps a copy); a node that sends records
near the row limit now fills its share of the budget, not the board's memory, and a node within its share of both
keeps every record.

Within a node, a cut takes one row at a time, the oldest of the client holding the most (rows, or bytes; of equals,
the one seen first), down to the node's share: one client's flood through a node costs its own rows, and a client
at or under the level the cut ends at keeps every record, so the placement still sees it. Before, a node lost its
oldest rows whoever they were: one client's newer flood pushed every other client of its node out of the window,
and their streams out of the placement (``test_one_clients_flood_through_a_node_*``). Client ids are what the
serving node recorded (at most ``max_clients_per_address`` per address, agent/client_ids.py); a member that makes
up clients only spreads its own node's share thinner, since nodes are cut first. The client holding the most is the
top of a heap per node (by rows, and by bytes), kept across pages: a row cut is O(log clients), so a member's
thousands of made-up clients do not make each of its pages cost their number (tidy12's first cut built its heap from
the node's clients every time; tests/unit/request_window_reference.py keeps it, and the two must cut alike).

Records are kept packed, one ``bytes`` row each (agent/packed_records.py): a full window of 50,000 is a few MiB, not
~70; expiry and trimming read only the rows' stamps and lengths, and ``records()`` hands out a view that unpacks on
reading.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable
from heapq import heapify, heappop, heappush, heapreplace
from itertools import compress, count, repeat
from operator import add, mul, neg

from agent.packed_records import MAX_ROW_BYTES, RecordView, pack_record, row_client, row_ts
from agent.placement import RequestRecord
from agent.placement_sites import fair_cap

MAX_WINDOW_BYTES = 16 * 1024 * 1024  # the default budget: a full window of 50,000 lab records (ten nodes) is ~11 MiB
ROW_OVERHEAD = 48  # what holding a row costs beyond its length: the bytes object's header (33) and its list slot
# ... and a client's rows held apart: its list (88), its entries and size (an int) in the node's two dicts, its id's
# entry among the interned strings (that table grows to ~3x the ids held: the window keeps a made-up id alive), its
# first-seen order (an int, its entry in a third dict) and its entries in the node's cut heaps (a tuple and two ints
# each): ~200 more than before the heaps were kept (384); measured with tracemalloc, a node of 24,000 one-row made-up
# clients holds 15.7 MiB against its 16 MiB; the id itself is counted by its size
CLIENT_OVERHEAD = 512

Rows = dict[str, list[bytes]]  # one node's rows: client -> its packed rows, in arrival order
STALE_SLACK = 64  # a node's cut heap is rebuilt once it would hold over twice its clients' entries and this many


def held_bytes(rows: Collection[bytes]) -> int:
    """The memory ``rows`` take in a window, as its byte budget counts it (without their clients' ``client_cost``)."""
    return sum(map(len, rows)) + len(rows) * ROW_OVERHEAD


def client_cost(client: str) -> int:
    """What a node's holding rows of ``client`` costs beyond the rows: its list, its dict entry, its id."""
    return CLIENT_OVERHEAD + sys.getsizeof(client)


def node_bytes(clients: Rows) -> int:
    """The memory one node's rows take, as the byte budget counts it."""
    return sum(client_sizes(clients, by_bytes=True))


def client_sizes(clients: Rows, by_bytes: bool) -> list[int]:
    """Each client's rows (or their bytes with its ``client_cost``), in the node's order: iterated in C (map, not a
    Python loop), since a member may report a node's share of the window for that many made-up clients."""
    counts = map(len, clients.values())
    if not by_bytes:
        return list(counts)
    lengths = map(sum, map(map, repeat(len), clients.values()))
    rows = map(add, lengths, map(mul, counts, repeat(ROW_OVERHEAD)))
    return list(map(add, rows, map(add, map(sys.getsizeof, clients), repeat(CLIENT_OVERHEAD))))  # + client_cost


def view_bytes(view: RecordView) -> int:
    """The bytes a window's ``records()`` take as its budget counts them (its groups are one node's client each)."""
    return sum(held_bytes(rows) + client_cost(row_client(rows[0])) for _, rows in view.groups)


class RequestWindow:
    """Request records per logging node and client, within the window's age, count and byte bounds."""

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
        self._seen = count()  # clients' first-seen order: the cut's tie-break (a node's dict order, as numbers)
        self._order: dict[str, dict[str, int]] = {}  # node -> client -> when it was first seen (in the node's rows)
        self._heaps: dict[str, list[ClientHeap | None]] = {}  # node -> [by rows, by bytes], made on its first cut
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
            order = self._order.setdefault(node, {})
            added = held_bytes(kept)
            for client, row in zip(clients_of, kept, strict=True):
                rows = clients.get(client)
                if rows is None:
                    rows = clients[client] = []
                    sizes[client] = cost = client_cost(client)
                    order[client] = next(self._seen)
                    added += cost
                rows.append(row)
                sizes[client] += len(row) + ROW_OVERHEAD
            self._changed(node, clients_of, (0, 1))
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
                    self._changed(node, (client,), (0, 1))
                else:
                    del clients[client], self._order[node][client]  # its heap entries go stale
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
        self._order = {n: dict(zip(clients, self._seen, strict=False)) for n, clients in self._by_node.items()}
        self._heaps = {}
        for node in list(self._by_node):
            self._recount_node(node)
        self._totals()
        if self._size > self.max_records or self._bytes > self.max_bytes:
            self._trim()

    def clear(self) -> None:
        for per_node in (self._by_node, self._count_of, self._bytes_of, self._client_bytes, self._order, self._heaps):
            per_node.clear()
        self._size = self._bytes = 0

    def _recount_node(self, node: str) -> None:
        """Count ``node``'s rows and bytes again (after an expiry or a load); a node left with none is dropped."""
        clients = self._by_node[node]
        if clients:
            self._count_of[node] = sum(map(len, clients.values()))
            self._client_bytes[node] = dict(zip(clients, client_sizes(clients, by_bytes=True), strict=True))
            self._bytes_of[node] = sum(self._client_bytes[node].values())
        else:
            self._drop_node(node)

    def _drop_node(self, node: str) -> None:
        """Forget ``node``: it holds no rows."""
        for per_node in (self._by_node, self._count_of, self._bytes_of, self._client_bytes, self._order, self._heaps):
            per_node.pop(node, None)

    def _changed(self, node: str, clients: Iterable[str], kinds: tuple[int, ...]) -> None:
        """``clients`` of ``node`` hold other rows now: their entries in its heaps of these kinds (0: by rows, 1: by
        bytes) are stale, and they are pushed again before the next cut (a set update: C-level). A heap whose
        changed clients would take it past its bound is dropped instead (made again whole at the next cut), so a
        node that is not cut for a while holds no more than that."""
        heaps = self._heaps.get(node)
        if heaps is None:
            return  # no cut yet: its heaps will be made from what it then holds
        bound = 2 * len(self._by_node[node]) + STALE_SLACK
        for kind in kinds:
            heap = heaps[kind]
            if heap is not None:
                heap.changed.update(clients)
                if len(heap.entries) + len(heap.changed) > bound:
                    heaps[kind] = None

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
        theirs while they hold less. The client holding the most is the top of the node's heap (``_cut_heap``), kept
        across pages: each row cut is O(log clients), not a pass over the node's clients (tidy12's cut built its heap
        from them every time: a member's page of 1,000 made-up clients against a full share took 24-33 ms)."""
        clients, order = self._by_node[node], self._order[node]
        sizes_now = self._client_bytes[node]
        heap = self._cut_heap(node, by_bytes)
        rows_left, nbytes = self._count_of[node], self._bytes_of[node]
        dropped: dict[str, int] = {}  # client -> rows cut from its front
        while (nbytes if by_bytes else rows_left) > keep and heap:
            size, i, client = heap[0]
            rows, k = clients.get(client), dropped.get(client, 0)
            if rows is None or k == len(rows) or order[client] != i or -size != (sizes_now[client] if by_bytes
                                                                                    else len(rows) - k):  # fmt: skip
                heappop(heap)  # stale: the client has gone, or holds another size now
                continue
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
                del clients[client], sizes_now[client], order[client]  # its entries in the other heap go stale
            else:
                del clients[client][:k]
        if not clients:
            self._drop_node(node)
            return
        self._count_of[node], self._bytes_of[node] = rows_left, nbytes
        self._changed(node, [c for c in dropped if c in clients], (0,) if by_bytes else (1,))  # this heap knows

    def _cut_heap(self, node: str, by_bytes: bool) -> CutEntries:
        """``node``'s heap of (-held, first seen, client), by rows or by bytes, such that every client it holds has an
        entry for what it holds now (entries of what it held before are skipped when they come up). Made on the
        node's first cut of that kind (from the clients' sizes, C-level iteration); then the clients whose
        holdings changed since are pushed again, O(log clients) each, once per cut however many of their rows came;
        made again whole once stale entries would outnumber the live ones (``_changed``), so a heap holds at most
        about twice the node's clients, and a rebuild is paid for by the pushes before it."""
        clients, order = self._by_node[node], self._order[node]
        heaps = self._heaps.setdefault(node, [None, None])
        kind = 1 if by_bytes else 0
        heap = heaps[kind]
        if heap is None or len(heap.entries) + len(heap.changed) > 2 * len(clients) + STALE_SLACK:
            sizes = map(self._client_bytes[node].__getitem__, clients) if by_bytes else map(len, clients.values())
            heap = heaps[kind] = ClientHeap(list(zip(map(neg, sizes), map(order.__getitem__, clients), clients,
                                                     strict=True)))  # fmt: skip
            return heap.entries
        entries = heap.entries
        if by_bytes:
            size_of = self._client_bytes[node]
            for c in heap.changed:
                if c in clients:  # else gone: its entries are stale
                    heappush(entries, (-size_of[c], order[c], c))
        else:
            for c in heap.changed:
                rows = clients.get(c)
                if rows is not None:
                    heappush(entries, (-len(rows), order[c], c))
        heap.changed.clear()
        return entries


CutEntries = list[tuple[int, int, str]]  # (-held, first-seen order, client): the one holding the most first


class ClientHeap:
    """One node's clients by what they hold (rows, or bytes), the one holding the most on top, kept across cuts;
    ``changed``: the clients whose entries are stale, to be pushed again before the next cut."""

    __slots__ = ("changed", "entries")

    def __init__(self, entries: CutEntries) -> None:
        heapify(entries)
        self.entries = entries
        self.changed: set[str] = set()
