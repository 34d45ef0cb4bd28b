"""The leader's request window mirrored in the solver worker: the snapshot is built there, not in the serving process.

``build_snapshot`` over a full window (50,000 records) is ~150 ms of pure Python; in a thread of the agent it holds
the GIL and the leader's proxied requests and endpoint answers wait behind it (bench/leader_stall_bench.py). Sending
the whole window to the worker every round costs about as much as the build (encoding 50,000 records: ~400 ms as
JSON, ~230 ms pickled, ~95 ms marshalled, and the worker decodes them again), so the worker keeps a copy of the
window and each round sends only what changed:

* ``JournaledWindow`` (the round machine's window, agent/leader_round.py) journals every ``add`` (node, records,
  now) and ``expire`` (now) as events with a sequence number; ``take_delta`` drains them once per solve. The journal
  is bounded like the window (``max_records`` in its events' records, an expiry counting one; ``max_bytes`` in its
  rows, counted as the window counts them; pages with nothing kept are not journaled): past either the events are
  dropped and the delta says so (``gap``), and the receiver must start again from the whole window. The serving
  process so holds at most twice the window's byte budget in rows (the journal keeps rows the window has evicted
  since the last solve).
* ``WorkerWindow`` (in the worker) replays the events through the same ``RequestWindow`` code, so its records are the
  leader's, in the same order: the same snapshot, the same plan. A message whose base is not the worker's sequence
  is refused (``WindowSyncError``); a ``reset`` message carries the whole window (a new worker, after a gap). Its
  copy is held to the same bounds, so it never holds more than the leader's window; while a message is applied the
  worker also holds the message (its JSON line, the parsed text and an event's decoded rows: each within ~1.4x the
  byte budget; the text is dropped once parsed), so its peak is ~4x the budget (measured), never what peers offered.

Wire form (JSON, the worker's line protocol): ``{"base": int, "seq": int, "events": [...]}`` or ``{"seq": int,
"reset": [[node, records], ...], "config": [max_records, window_s, max_ahead_s, max_bytes]}`` (a group per node
and client, in the window's order: the copy reads each row's client and keeps the clients in that order, which the
window's cuts break ties by); an event is ``["add", node, now, records]`` or ``["expire", now]``; ``records`` is
a list of base64 strings, each a marshalled list of up to ENCODE_CHUNK packed rows and CHUNK_BYTES of them
(agent/packed_records.py: the window keeps its records packed, so the journal and a reset send them as they are
held, and the worker keeps them as they arrive; a chunk longer than MAX_CHUNK_CHARS is refused).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import marshal
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any

from agent.catalogue import Catalogue, ModelSpec
from agent.packed_records import RecordView, check_rows, pack_record
from agent.placement import NodeReport, RequestRecord, build_snapshot
from agent.request_window import MAX_WINDOW_BYTES, RequestWindow, held_bytes

log = logging.getLogger(__name__)

ENCODE_CHUNK = 1000  # records per marshal.dumps call: a C call holds the GIL whole, so big ones are cut up
CHUNK_BYTES = 256 * 1024  # ... and at most this many bytes of rows (1,000 lab rows are ~180 KiB; maximal ones 8 MiB)
# a chunk's base64 text at most: CHUNK_BYTES of rows, marshal's 5 bytes per row and per list (a single row over
# CHUNK_BYTES, which no window holds, is the one exception encode_rows makes and decode_rows refuses)
MAX_CHUNK_CHARS = 4 * -(-(CHUNK_BYTES + 5 * ENCODE_CHUNK + 5) // 3)

WindowConfig = tuple[int, float, float, int]  # a window's bounds: (max_records, window_s, max_ahead_s, max_bytes)
AddEvent = tuple[str, str, float, tuple[bytes, ...]]  # ("add", node, now, the packed rows it kept)
ExpireEvent = tuple[str, float]
WindowEvent = AddEvent | ExpireEvent


class WindowSyncError(ValueError):
    """A window message that does not follow what the worker holds (base != its sequence), or is malformed."""


@dataclass(frozen=True)
class WindowDelta:
    """The window's events since the last ``take_delta``: sequence ``base`` -> ``seq``; ``gap``: some were dropped."""

    base: int
    seq: int
    events: tuple[WindowEvent, ...] = field(default=(), compare=False)
    gap: bool = False


class JournaledWindow(RequestWindow):
    """A RequestWindow that journals its changes for a mirror (bounded: ``max_records`` records and ``max_bytes`` of
    rows in the journal)."""

    def __init__(
        self, max_records: int, window_s: float, max_ahead_s: float, max_bytes: int = MAX_WINDOW_BYTES
    ) -> None:
        super().__init__(max_records, window_s, max_ahead_s, max_bytes)
        self.seq = 0
        self._base = 0  # the sequence before the journal's first event
        self._journal: list[WindowEvent] = []
        self._journaled = 0  # records in the journal's add events
        self._journal_bytes = 0  # their rows' held_bytes
        self._gap = False

    def add(self, node: str, records: Iterable[RequestRecord], now: float) -> int:
        clients, rows = self.plausible(records, now)  # packed once: the window and the journal share the rows
        if rows:  # a page with nothing kept changes nothing: nothing to journal
            self._journal_event(("add", node, now, tuple(rows)), len(rows), held_bytes(rows))
        return self._take(node, clients, rows)

    def expire(self, now: float) -> None:
        self._journal_event(("expire", now), 0, 0)
        super().expire(now)

    def clear(self) -> None:
        super().clear()
        self._drop_journal()  # nothing to replay: the mirror must start again from the (empty) window

    def _journal_event(self, event: WindowEvent, records: int, nbytes: int) -> None:
        self.seq += 1
        weight = max(1, records)  # an expiry weighs one: events, not only records, are bounded
        if self._journaled + weight > self.max_records or self._journal_bytes + nbytes > self.max_bytes:
            self._drop_journal()  # bounded: a mirror that fell this far behind resets
            return
        self._journal.append(event)
        self._journaled += weight
        self._journal_bytes += nbytes

    def forget_journal(self) -> None:
        """Drop the journal (no mirror will replay it: the node stepped down); the next delta says ``gap``."""
        self._drop_journal()

    def _drop_journal(self) -> None:
        self._journal, self._journaled, self._journal_bytes, self._gap = [], 0, 0, True

    def take_delta(self) -> WindowDelta:
        """The events since the last call (drained): what a mirror at ``base`` applies to reach ``seq``."""
        delta = WindowDelta(self._base, self.seq, tuple(self._journal), self._gap)
        self._base, self._journal, self._journaled, self._journal_bytes, self._gap = self.seq, [], 0, 0, False
        return delta

    def config(self) -> WindowConfig:
        """The window's bounds as a mirror needs them: (max_records, window_s, max_ahead_s, max_bytes)."""
        return (self.max_records, self.window_s, self.max_ahead_s, self.max_bytes)

    def journal_records(self) -> int:
        """The journal's weight: its events' records, an expiry counting one (at most ``max_records``)."""
        return self._journaled

    def journal_bytes(self) -> int:
        """The journal's rows, as the window counts bytes (at most ``max_bytes``)."""
        return self._journal_bytes


def encode_rows(rows: Sequence[bytes]) -> str:
    """A JSON array of chunks, each up to ``ENCODE_CHUNK`` packed rows and ``CHUNK_BYTES`` of them, marshalled and
    base64-encoded (short C calls: other threads run in between)."""
    return "".join(_rows_parts(rows))


def _rows_parts(rows: Sequence[bytes]) -> Iterator[str]:
    """``encode_rows``'s text in pieces of at most one chunk (a message is written to the worker piece by piece: the
    serving process never holds a whole window's text)."""
    yield "["
    for n, (i, j) in enumerate(chunk_bounds(rows)):
        yield f'{"," if n else ""}"{base64.b64encode(marshal.dumps(list(rows[i:j]))).decode()}"'
    yield "]"


def chunk_bounds(rows: Sequence[bytes]) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive chunks of ``rows``: at most ``ENCODE_CHUNK`` rows and ``CHUNK_BYTES`` of them
    each (at least one row each: a single row past CHUNK_BYTES is a chunk of its own)."""
    ends = list(accumulate(map(len, rows)))  # the rows' lengths summed up to each row (C loops: 50,000 in ~2 ms)
    start = 0
    while start < len(ends):
        before = ends[start - 1] if start else 0
        stop = bisect_right(ends, before + CHUNK_BYTES, start, min(len(ends), start + ENCODE_CHUNK))
        stop = max(stop, start + 1)
        yield start, stop
        start = stop


def decode_rows(chunks: Iterable[str]) -> list[bytes]:
    """The packed rows back from ``encode_rows``'s chunks; raises ValueError on anything else (a chunk longer than
    ``MAX_CHUNK_CHARS`` included)."""
    rows: list[bytes] = []
    for chunk in chunks:
        if not isinstance(chunk, str) or len(chunk) > MAX_CHUNK_CHARS:
            raise ValueError(f"not a chunk of records of at most {MAX_CHUNK_CHARS} characters")
        try:
            part = marshal.loads(base64.b64decode(chunk, validate=True))
        except (EOFError, TypeError, binascii.Error) as exc:
            raise ValueError(f"not a chunk of records: {exc}") from exc
        rows.extend(check_rows(part))
    return rows


def encode_delta(delta: WindowDelta) -> str:
    """The JSON text of a delta message (``delta.gap`` must be False: a gap needs ``encode_reset``)."""
    return "".join(delta_parts(delta))


def delta_parts(delta: WindowDelta) -> Iterator[str]:
    """``encode_delta``'s text in pieces of at most one chunk of rows."""
    yield f'{{"base":{delta.base},"seq":{delta.seq},"events":['
    for n, event in enumerate(delta.events):
        comma = "," if n else ""
        if event[0] == "add":
            _, node, now, records = event  # type: ignore[misc]
            yield f'{comma}["add",{json.dumps(node)},{json.dumps(now)},'
            yield from _rows_parts(records)
            yield "]"
        else:
            yield f'{comma}["expire",{json.dumps(event[1])}]'
    yield "]}"


def encode_reset(records: Sequence[RequestRecord], seq: int, config: WindowConfig) -> str:
    """The JSON text of a reset message: the whole window at sequence ``seq`` (``RequestWindow.records()``: node by
    node, each ``logged_by`` its node; its rows are sent as they are held) with its bounds (max_records, window_s,
    max_ahead_s, max_bytes)."""
    return "".join(reset_parts(records, seq, config))


def reset_parts(records: Sequence[RequestRecord], seq: int, config: WindowConfig) -> Iterator[str]:
    """``encode_reset``'s text in pieces of at most one chunk of rows."""
    view = records if isinstance(records, RecordView) else RecordView(_packed_groups(records))
    yield f'{{"seq":{seq},"config":{json.dumps(list(config))},"reset":['
    for n, (node, rows) in enumerate(view.groups):
        yield f"{',' if n else ''}[{json.dumps(node)},"
        yield from _rows_parts(rows)
        yield "]"
    yield "]}"


def _packed_groups(records: Iterable[RequestRecord]) -> list[tuple[str | None, list[bytes]]]:
    """Records (not a window's view) as (logging node, packed rows) groups, in order."""
    groups: list[tuple[str | None, list[bytes]]] = []
    for r in records:
        if not groups or groups[-1][0] != r.logged_by:
            groups.append((r.logged_by, []))
        groups[-1][1].append(pack_record(r))
    return groups


class WorkerWindow:
    """The worker's copy of the leader's window: replays delta messages, or starts again from a reset."""

    def __init__(self) -> None:
        self.window: RequestWindow | None = None
        self.seq = -1  # nothing held yet: only a reset is accepted

    def apply(self, message: Mapping[str, Any]) -> None:
        """Apply one window message; raises WindowSyncError when it does not follow what is held."""
        try:
            if "reset" in message:
                self._reset(message)
            else:
                self._replay(message)
        except (KeyError, TypeError, ValueError) as exc:
            self.window, self.seq = None, -1  # half applied: only a reset may follow
            if isinstance(exc, WindowSyncError):
                raise
            raise WindowSyncError(f"malformed window message: {type(exc).__name__}: {exc}") from exc

    def _reset(self, message: Mapping[str, Any]) -> None:
        max_records, window_s, max_ahead_s, max_bytes = message["config"]
        window = RequestWindow(int(max_records), float(window_s), float(max_ahead_s), int(max_bytes))
        window.load_rows((str(node), decode_rows(rows)) for node, rows in message["reset"])
        self.window, self.seq = window, int(message["seq"])

    def _replay(self, message: Mapping[str, Any]) -> None:
        if self.window is None or int(message["base"]) != self.seq:
            raise WindowSyncError(f"window delta from {message.get('base')} but the worker holds {self.seq}")
        for event in message["events"]:
            if event[0] == "add":
                self.window.add_rows(str(event[1]), decode_rows(event[3]), float(event[2]))
            elif event[0] == "expire":
                self.window.expire(float(event[1]))
            else:
                raise WindowSyncError(f"unknown window event {event[0]!r}")
        self.seq = int(message["seq"])

    def records(self) -> RecordView:
        """The window's records (as the leader's ``RequestWindow.records``)."""
        return self.window.records() if self.window is not None else RecordView(())


@dataclass(frozen=True)
class BuildInputs:
    """``build_snapshot``'s inputs besides the records: the round's reports, the catalogue, the time, the objective."""

    nodes: tuple[NodeReport, ...]
    catalogue: Catalogue
    now: float
    objective: str
    window_s: float | None

    def to_json(self) -> dict[str, Any]:
        """The wire form (small: one entry per node and per catalogue model)."""
        models = [{**asdict(spec), "command": list(spec.command)} for spec in self.catalogue.models.values()]
        catalogue = {"version": self.catalogue.version, "source": self.catalogue.source, "models": models}
        return {"nodes": [asdict(n) for n in self.nodes], "now": self.now, "objective": self.objective,
                "window_s": self.window_s, "catalogue": catalogue}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuildInputs:
        """Back from ``to_json``; raises KeyError/TypeError/ValueError on anything else."""
        cat = data["catalogue"]
        specs = [ModelSpec(**{**m, "command": tuple(m["command"])}) for m in cat["models"]]
        catalogue = Catalogue({s.name: s for s in specs}, str(cat["version"]), str(cat["source"]))
        window_s = data["window_s"]
        nodes = tuple(NodeReport(**{**n, "service": {m: tuple(v) for m, v in n.get("service", {}).items()}})
                      for n in data["nodes"])  # fmt: skip
        return cls(nodes, catalogue, float(data["now"]), str(data["objective"]),
                   None if window_s is None else float(window_s))  # fmt: skip

    def build(self, records: Iterable[RequestRecord]) -> dict[str, Any]:
        """The round's snapshot from these records (agent.placement.build_snapshot)."""
        return build_snapshot(list(self.nodes), records, self.catalogue, self.now, self.objective, self.window_s)


@dataclass(frozen=True)
class WindowBuild:
    """One round's snapshot, to be built by the worker: the window's delta, the whole window (for a reset), its
    bounds, and the rest of ``build_snapshot``'s inputs."""

    delta: WindowDelta
    records: Sequence[RequestRecord]  # the window's records (a RecordView: still packed)
    config: WindowConfig
    inputs: BuildInputs
