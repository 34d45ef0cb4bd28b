"""Request records packed as one ``bytes`` row each: the request window's compact form, in the agent and the worker.

A ``RequestRecord`` with its RTT dict and boxed floats is ~1.4 KiB of Python objects at ten nodes; a row is one
``bytes`` object: the stamp as 8 bytes (little-endian double, read in place for expiry and trimming) followed by
``marshal.dumps((model, client, marshal.dumps(rtt_ms), node, latency_ms, status))`` (floats and strings exactly;
``logged_by`` is not in the row: the window keeps rows per logging node). Rows are self-contained (no string table
shared between processes, so nothing to keep in step or to bound beyond the rows themselves) and cross the pipe to
the solver worker as they are. The worker reads what its own agent packed with the same interpreter: marshal's
format is the same on both ends. Only a row's reader unpacks it; the snapshot build does, once per round, in the
worker, and the RTTs only where it reads them (``PackedRtts``: a stream's newest records).

The strings are interned before packing, so marshal marks them and unpacking interns them again: the records of one
build share one object per node id, model and client rather than one per record and field (Python's interned
strings are mortal: one that no live object references any more is freed, so strangers' ids do not pile up).
"""

from __future__ import annotations

import marshal
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from sys import intern
from typing import Any, overload

from agent.placement import RequestRecord

_TS = struct.Struct("<d")
MIN_ROW_BYTES = _TS.size + 1  # a stamp and at least one byte of marshalled fields
# the most one row may take: the wire's request record (peerserve/wire.py: 64 RTTs to ids of <= 64 characters, a client
# name of <= 128) packs to ~5 KiB of ASCII, up to ~8 KiB of three-byte characters (bench/window_memory_bench.py's
# maximal_record) and past this of four-byte ones; a record past it is not kept (and the window has a byte budget)
MAX_ROW_BYTES = 8192


def pack_record(r: RequestRecord) -> bytes:
    """One record as a row (its ``logged_by`` left out; its RTTs a nested marshal, read only when looked at)."""
    rtt_ms = marshal.dumps({intern(k): v for k, v in r.rtt_ms.items()})
    node = None if r.node is None else intern(r.node)
    return _TS.pack(r.ts) + marshal.dumps((intern(r.model), intern(r.client), rtt_ms, node, r.latency_ms, r.status))


def row_ts(row: bytes) -> float:
    """A row's stamp, read in place (nothing else unpacked)."""
    ts: float = _TS.unpack_from(row)[0]
    return ts


def row_client(row: bytes) -> str:
    """A row's client id (the window keeps each node's rows per client; a mirror learns the id from the row);
    raises ValueError on anything but ``pack_record``'s row."""
    try:
        fields = marshal.loads(row[_TS.size :])
    except (EOFError, TypeError, ValueError) as exc:
        raise ValueError(f"not a packed request record: {exc}") from exc
    if not isinstance(fields, tuple) or len(fields) != 6 or not isinstance(fields[1], str):
        raise ValueError("not a packed request record")
    return fields[1]


def unpack_row(row: bytes, logged_by: str | None) -> RequestRecord:
    """The record back from ``pack_record``'s row, marked as ``logged_by``'s; raises ValueError on anything else."""
    try:
        (ts,) = _TS.unpack_from(row)
        model, client, rtt_ms, node, latency_ms, status = marshal.loads(row[_TS.size :])
    except (EOFError, TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"not a packed request record: {exc}") from exc
    if not isinstance(rtt_ms, bytes):
        raise ValueError("not a packed request record: its RTTs are not packed")
    return RequestRecord(ts, model, client, PackedRtts(rtt_ms), node, latency_ms, status, logged_by)


class PackedRtts(Mapping[str, float]):
    """A record's RTTs (node -> ms) still marshalled until first read: the build reads a stream's newest records'
    RTTs only, so most records' RTTs are never unpacked (nor held as a dict and boxed floats)."""

    __slots__ = ("_blob", "_map")

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._map: dict[str, float] | None = None

    def _loaded(self) -> dict[str, float]:
        if self._map is None:
            try:
                loaded = marshal.loads(self._blob)
            except (EOFError, TypeError, ValueError) as exc:
                raise ValueError(f"not packed RTTs: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ValueError("not packed RTTs")
            self._map = loaded
        return self._map

    def __getitem__(self, node: str) -> float:
        return self._loaded()[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return repr(self._loaded())


def check_rows(rows: Any) -> list[bytes]:
    """``rows`` if it is a list of rows at least ``MIN_ROW_BYTES`` long (their fields are read at unpacking)."""
    if not isinstance(rows, list) or not all(isinstance(r, bytes) and len(r) >= MIN_ROW_BYTES for r in rows):
        raise ValueError("not a list of packed request records")
    return rows


class RecordView(Sequence[RequestRecord]):
    """A window's records at one moment, still packed: (logging node, rows) groups, unpacked as they are read.

    It holds references to the window's immutable rows (no copy of a record); equal to any sequence of the same
    records in the same order (a tuple of ``RequestRecord``, another view)."""

    __slots__ = ("_flat", "_len", "groups")

    def __init__(self, groups: Iterable[tuple[str | None, Sequence[bytes]]]) -> None:
        self.groups: tuple[tuple[str | None, tuple[bytes, ...]], ...] = tuple(
            (node, tuple(rows)) for node, rows in groups if rows
        )
        self._len = sum(len(rows) for _, rows in self.groups)
        self._flat: list[tuple[str | None, bytes]] | None = None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[RequestRecord]:
        for node, rows in self.groups:
            for row in rows:
                yield unpack_row(row, node)

    @overload
    def __getitem__(self, i: int) -> RequestRecord: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[RequestRecord, ...]: ...

    def __getitem__(self, i: int | slice) -> RequestRecord | tuple[RequestRecord, ...]:
        if self._flat is None:
            self._flat = [(node, row) for node, rows in self.groups for row in rows]
        if isinstance(i, slice):
            return tuple(unpack_row(row, node) for node, row in self._flat[i])
        node, row = self._flat[i]
        return unpack_row(row, node)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordView({len(self)} records from {len(self.groups)} nodes)"
