"""Persistent state in SQLite under the data directory: desired set, fencing term, request statistics.

Survives a power cut (WAL journal): after a restart the agent restores its last desired set, the
highest leader term it has seen (and the leader it accepted for it), and the election's term and vote
(written with a synced commit before any election message leaves); the leader's cursors into the
request log stay valid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import StateError

log = logging.getLogger(__name__)

MAX_PENDING = 20_000  # request records queued between batch writes (written every 0.25 s; ~4 MB at most)
FAILURE_LOG_S = 60.0  # a failing write is logged at most once in this many seconds
PendingRow = tuple[float, str, str, dict[str, float], str | None, float | None, int]

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS desired (model TEXT PRIMARY KEY, count INTEGER NOT NULL, on_demand INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL, model TEXT NOT NULL, client TEXT NOT NULL, rtts TEXT NOT NULL,
    node TEXT, latency_ms REAL, status INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_stats (
    model TEXT PRIMARY KEY, provisioned_at REAL, requests INTEGER NOT NULL DEFAULT 0, last_request REAL
);
CREATE TABLE IF NOT EXISTS client_rtt (
    client TEXT NOT NULL, node TEXT NOT NULL, rtt_ms REAL NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (client, node)
);
CREATE INDEX IF NOT EXISTS client_rtt_ts ON client_rtt(ts);
"""


@dataclass(frozen=True)
class DesiredState:
    """What this node should run: model -> instance count, and who said so."""

    instances: Mapping[str, int]
    term: int
    leader: str | None
    on_demand: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RequestRecord:
    id: int
    ts: float
    model: str
    client: str
    rtts: Mapping[str, float]
    node: str | None
    latency_ms: float | None
    status: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "model": self.model,
            "client": self.client,
            "rtt_ms": dict(self.rtts),
            "node": self.node,
            "latency_ms": self.latency_ms,
            "status": self.status,
        }


class Store:
    """A small synchronous SQLite store; every method is one short transaction, thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        max_request_rows: int = 100_000,
        client_rtt_ttl_s: float = 3600.0,
        client_rtt_rows: int = 50_000,
        max_pending: int = MAX_PENDING,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "peerserve.sqlite3"
        self.max_request_rows = max_request_rows
        self.client_rtt_ttl_s = client_rtt_ttl_s
        self.client_rtt_rows = client_rtt_rows
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise self.unusable(exc) from exc
        self._inserted = 0
        self._rtt_upserts = 0
        self._pending: deque[PendingRow] = deque(maxlen=max_pending)  # the oldest go first past the bound
        self.dropped = 0  # request records lost: the queue was full (writes fell behind) or a write failed
        self.write_failures = 0  # flushes that failed (disk full, I/O error): their records are counted in dropped
        self.last_write_error = ""
        self._failure_logged = -math.inf  # monotonic time of the last failure logged (one line a minute at most)

    def unusable(self, exc: Exception) -> StateError:
        """The refusal to start on a database SQLite cannot open or read (review27b F1: it was a traceback on every
        start, systemd restarting it each second). Never replaced by a new one here: it holds the election's term
        and vote, and a node that forgot its vote could grant a second one in a term it already voted in."""
        return StateError(
            f"cannot use the state database {self.path} ({exc}). If it is damaged (e.g. 'file is not a database', "
            f"'database disk image is malformed'), stop the agent and move it aside with its -wal and -shm files "
            f"(mv {self.path} {self.path}.damaged): the agent then starts with a new one and forgets this node's "
            "desired set (the leader orders it again), the election term and vote it recorded (restart it while the "
            "cluster has a leader, 'peerserve cluster', so it cannot vote twice in one term) and its request log"
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back by itself on some errors (SQLITE_FULL): no second one
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def _get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO kv(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- fencing and desired state -------------------------------------------------------------------
    def highest_term(self) -> int:
        with self._lock:
            return int(self._get("highest_term") or 0)

    def observe_term(self, term: int, leader: str | None = None) -> int:
        """Record a term seen (and the leader accepted for it, if known); returns the highest term now known."""
        with self._lock, self._transaction():
            highest = int(self._get("highest_term") or 0)
            if term > highest:
                self._set("highest_term", str(term))
                self._set("term_leader", leader or "")
            elif term == highest and leader and not self._get("term_leader"):
                self._set("term_leader", leader)
            return max(term, highest)

    def term_leader(self) -> str | None:
        """The leader accepted for the highest term seen (None while none is known)."""
        with self._lock:
            return self._get("term_leader") or None

    # -- election hard state -------------------------------------------------------------------------
    def election_state(self) -> tuple[int, str | None]:
        """The election's persisted (term, vote): a restarted node starts from exactly this."""
        with self._lock:
            return int(self._get("election_term") or 0), self._get("election_vote") or None

    def election_accepted(self) -> str | None:
        """The leader the election accepted for its persisted term (the one it obeys in that term), if any."""
        with self._lock:
            return self._get("election_leader") or None

    def save_election_state(self, term: int, vote: str | None, leader: str | None = None) -> None:
        """Make (term, vote, accepted leader) durable before returning (WAL synced): persist before send."""
        with self._lock:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                with self._transaction():
                    self._set("election_term", str(term))
                    self._set("election_vote", vote or "")
                    self._set("election_leader", leader or "")
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def desired(self) -> DesiredState:
        with self._lock:
            rows = self._db.execute("SELECT model, count, on_demand FROM desired").fetchall()
            term = int(self._get("desired_term") or 0)
            leader = self._get("desired_leader")
        return DesiredState(
            instances={m: int(c) for m, c, _ in rows},
            term=term,
            leader=leader or None,
            on_demand=frozenset(m for m, _, od in rows if od),
        )

    def set_desired(self, state: DesiredState) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM desired")
            self._db.executemany(
                "INSERT INTO desired(model, count, on_demand) VALUES (?, ?, ?)",
                [(m, c, int(m in state.on_demand)) for m, c in state.instances.items()],
            )
            self._set("desired_term", str(state.term))
            self._set("desired_leader", state.leader or "")

    # -- request statistics --------------------------------------------------------------------------
    def record_request(
        self,
        ts: float,
        model: str,
        client: str,
        rtts: Mapping[str, float],
        node: str | None,
        latency_ms: float | None,
        status: int,
    ) -> None:
        """Queue a request record; ``flush()`` writes the queue in one transaction (readers flush first)."""
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append((ts, model, client, dict(rtts), node, latency_ms, status))

    def queued(self) -> int:
        """Request records waiting for the next ``flush``."""
        return len(self._pending)

    def flush(self) -> int:
        """Write queued request records; returns how many.

        A write that fails (a full disk, an I/O error) loses its batch: counted in ``dropped`` and
        ``write_failures``, logged once a minute at most, never raised to the caller (the flush loop and every
        reader), so a full disk costs the leader statistics, not the agent's serving or its /stats routes."""
        with self._lock:
            pending, self._pending = list(self._pending), deque(maxlen=self._pending.maxlen)
            if not pending:
                return 0
            try:
                self._write(pending)
            except sqlite3.Error as exc:
                self.dropped += len(pending)
                self.write_failures += 1
                self.last_write_error = str(exc)[:200]
                if time.monotonic() - self._failure_logged >= FAILURE_LOG_S:
                    self._failure_logged = time.monotonic()
                    log.warning("writing %d request records failed (%s): they are lost", len(pending), exc)
                return 0
            return len(pending)

    def _write(self, pending: list[PendingRow]) -> None:
        """``flush``'s one transaction (the caller holds the lock)."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO requests(ts, model, client, rtts, node, latency_ms, status) VALUES (?,?,?,?,?,?,?)",
                [(ts, m, c, json.dumps(r), n, lat, st) for ts, m, c, r, n, lat, st in pending],
            )
            self._db.executemany(
                "INSERT INTO model_stats(model, requests, last_request) VALUES (?, 1, ?) "
                "ON CONFLICT(model) DO UPDATE SET requests = requests + 1, last_request = excluded.last_request",
                [(m, ts) for ts, m, _c, _r, n, _lat, st in pending if n is not None and 200 <= st < 300],
            )
            rtt_rows = [(c, node, float(v), ts) for ts, _m, c, r, _n, _lat, _st in pending for node, v in r.items()]
            self._db.executemany(
                "INSERT INTO client_rtt(client, node, rtt_ms, ts) VALUES (?,?,?,?) "
                "ON CONFLICT(client, node) DO UPDATE SET rtt_ms = excluded.rtt_ms, ts = excluded.ts",
                rtt_rows,
            )
            self._rtt_upserts += len(rtt_rows)
            if self._rtt_upserts >= max(1, self.client_rtt_rows // 10):
                self._rtt_upserts = 0
                self._expire_client_rtts(max(ts for ts, *_ in pending))
            self._inserted += len(pending)
            if self._inserted >= 1000:
                self._inserted = 0
                self._db.execute(
                    "DELETE FROM requests WHERE id <= (SELECT MAX(id) FROM requests) - ?",
                    (self.max_request_rows,),
                )

    def requests_since(self, cursor: int, limit: int) -> tuple[list[RequestRecord], int]:
        """Records with id > cursor (oldest first) and the cursor to pass next time."""
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, ts, model, client, rtts, node, latency_ms, status FROM requests "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (cursor, limit),
            ).fetchall()
        records = [RequestRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7]) for r in rows]
        return records, (records[-1].id if records else cursor)

    def mark_provisioned(self, model: str, ts: float) -> None:
        """A model went from zero to running instances here: its request count restarts."""
        with self._lock:
            self._db.execute(
                "INSERT INTO model_stats(model, provisioned_at, requests, last_request) VALUES (?, ?, 0, NULL) "
                "ON CONFLICT(model) DO UPDATE SET provisioned_at = excluded.provisioned_at, requests = 0",
                (model, ts),
            )

    def model_stats(self) -> dict[str, dict[str, Any]]:
        self.flush()
        with self._lock:
            rows = self._db.execute("SELECT model, provisioned_at, requests, last_request FROM model_stats").fetchall()
        return {
            m: {"provisioned_at": p, "requests_since_provisioned": int(n), "last_request": last}
            for m, p, n, last in rows
        }

    def client_rtts(self, client: str, now: float) -> dict[str, float]:
        """The client's last reported RTT per node, reports older than ``client_rtt_ttl_s`` left out."""
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT node, rtt_ms FROM client_rtt WHERE client = ? AND ts > ?",
                (client, now - self.client_rtt_ttl_s),
            ).fetchall()
        return {n: float(r) for n, r in rows}

    def expire_client_rtts(self, now: float) -> int:
        """Drop RTT reports older than the TTL, then the oldest past ``client_rtt_rows``; returns rows dropped."""
        self.flush()
        with self._lock, self._transaction():
            return self._expire_client_rtts(now)

    def client_rtt_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM client_rtt").fetchone()[0])

    def _expire_client_rtts(self, now: float) -> int:
        old = self._db.execute("DELETE FROM client_rtt WHERE ts <= ?", (now - self.client_rtt_ttl_s,)).rowcount
        over = self._db.execute(
            "DELETE FROM client_rtt WHERE rowid IN (SELECT rowid FROM client_rtt ORDER BY ts DESC LIMIT -1 OFFSET ?)",
            (self.client_rtt_rows,),
        ).rowcount
        return int(old) + int(over)
