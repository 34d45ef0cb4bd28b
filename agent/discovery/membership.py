"""Membership: a pure state machine over peers (alive / suspect / dead), driven by events with ``now``.

Events: a peer was *advertised* (mDNS or a seed), a *heartbeat* to it succeeded or failed, it *left*
gracefully, or time passed (*tick*). Liveness rests on heartbeats alone: a crashed node sends no mDNS
goodbye and its records linger for ~20 minutes, so mDNS only says who to heartbeat.

    alive --no heartbeat for suspect_after_s--> suspect --... dead_after_s--> dead --forget_after_s--> gone
      ^-------------------- any successful heartbeat ----------------------------'
    left (graceful stop) -> dead at once

Admission: an advert (mDNS or a seed) is only a *hint*: it creates a pending candidate (node id, peer URL),
bounded in number and age, that is heartbeated; the candidate becomes a member (a record) only when an
authenticated heartbeat answers from that node id. Strangers never appear in ``members()``. An mDNS goodbye
only asks for a probe (``probe``); a signed leave (``left``) or failed heartbeats make a member dead.
Duplicate node ids: identity is the node's pinned key (agent.identity), so whichever candidate answers
authentically as that id is the node; a peer claiming our own id is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from agent.errors import PeerError
from agent.peers import Member
from peerserve.wire import PeerState, WireError

__all__ = ["Membership", "MembershipConfig", "PeerState", "Transition", "parse_peer_state"]

MAX_PENDING = 64  # candidates (advertised, not yet authenticated) kept at once
PENDING_TTL_S = 60.0  # a candidate that never answers authentically is dropped after this
MAX_CONFLICTS = 256


@dataclass(frozen=True)
class MembershipConfig:
    heartbeat_interval_s: float = 0.5
    suspect_after_s: float = 1.0
    dead_after_s: float = 2.0
    dead_probe_interval_s: float = 2.0
    forget_after_s: float = 600.0
    pending_ttl_s: float = PENDING_TTL_S
    max_pending: int = MAX_PENDING


def parse_peer_state(data: Any, expected_id: str | None = None) -> PeerState:
    """Validate a heartbeat answer (peerserve.wire.PeerState); raises PeerError on garbage."""
    try:
        state = PeerState.parse(data)
    except WireError as exc:
        raise PeerError(f"bad heartbeat answer: {exc}") from exc
    if expected_id is not None and state.node_id != expected_id:
        raise PeerError(f"expected node {expected_id!r}, {state.node_id!r} answered")
    return state


@dataclass(frozen=True)
class Record:
    node_id: str
    api_url: str
    address: str
    status: str  # alive | suspect | dead
    last_ok: float | None
    last_probe: float
    since: float
    state: PeerState | None = None
    peer_url: str = ""


@dataclass(frozen=True)
class Candidate:
    """An advertised (node id, peer URL) not yet proven by an authenticated heartbeat."""

    node_id: str
    api_url: str
    peer_url: str
    address: str
    seen: float
    last_probe: float = -math.inf


@dataclass(frozen=True)
class Transition:
    """A peer changed status (or appeared / was forgotten: old or new is None)."""

    node_id: str
    old: str | None
    new: str | None
    reason: str


class Membership:
    """The peer table's state machine. Every method takes ``now``; none does I/O."""

    def __init__(self, self_id: str, config: MembershipConfig | None = None) -> None:
        self.self_id = self_id
        self.config = config or MembershipConfig()
        self.records: dict[str, Record] = {}  # admitted members
        self.pending: dict[tuple[str, str], Candidate] = {}  # (node id, peer url) -> candidate
        self.conflicts: set[tuple[str, str]] = set()  # (node id, url) claims we ignore (for logging)

    def advertised(self, node_id: str, api_url: str, address: str, now: float, peer_url: str = "") -> list[Transition]:
        """mDNS or a seed says ``node_id`` may be at ``peer_url``: a candidate to heartbeat, not a member."""
        peer_url = peer_url or api_url
        if node_id == self.self_id:
            if api_url != "" and len(self.conflicts) < MAX_CONFLICTS:
                self.conflicts.add((node_id, api_url))
            return []
        rec = self.records.get(node_id)
        if rec is not None and rec.peer_url == peer_url:
            return []
        key = (node_id, peer_url)
        if key in self.pending:
            self.pending[key] = replace(self.pending[key], seen=now)
        elif len(self.pending) < self.config.max_pending:
            self.pending[key] = Candidate(node_id, api_url, peer_url, address, now)
        elif len(self.conflicts) < MAX_CONFLICTS:
            self.conflicts.add((node_id, peer_url))
        return []

    def heartbeat_ok(self, node_id: str, state: PeerState, now: float, peer_url: str = "") -> list[Transition]:
        """An authenticated heartbeat from ``node_id`` at ``peer_url`` answered: admit or refresh it."""
        cand = self.pending.pop((node_id, peer_url), None)
        rec = self.records.get(node_id)
        if cand is not None:
            if rec is not None and rec.status == "alive" and rec.peer_url != peer_url:
                rec = replace(rec, peer_url=peer_url, address=cand.address)  # the same key answers here now
            if rec is None:
                rec = Record(node_id, state.api_url, cand.address, "new", None, now, now, None, peer_url)
            elif rec.status != "alive":
                rec = replace(rec, peer_url=peer_url, address=cand.address)
        if rec is None or (cand is None and peer_url and rec.peer_url != peer_url):
            return []
        old = None if rec.status == "new" else rec.status
        since = rec.since if rec.status == "alive" else now
        self.records[node_id] = replace(rec, api_url=state.api_url, status="alive", last_ok=now, state=state,
                                        since=since, last_probe=max(rec.last_probe, now))  # fmt: skip
        return [] if old == "alive" else [Transition(node_id, old, "alive", "authenticated heartbeat answered")]

    def heartbeat_sent(self, node_id: str, now: float, peer_url: str = "") -> None:
        cand = self.pending.get((node_id, peer_url))
        if cand is not None:
            self.pending[(node_id, peer_url)] = replace(cand, last_probe=now)
        rec = self.records.get(node_id)
        if rec is not None and (not peer_url or rec.peer_url == peer_url):
            self.records[node_id] = replace(rec, last_probe=now)

    def probe(self, node_id: str) -> None:
        """An unauthenticated hint (an mDNS goodbye) about a member: heartbeat it now, change nothing else."""
        rec = self.records.get(node_id)
        if rec is not None:
            self.records[node_id] = replace(rec, last_probe=-math.inf)

    def left(self, node_id: str, now: float) -> list[Transition]:
        """A member said, authenticated, that it leaves: dead at once."""
        rec = self.records.get(node_id)
        if rec is None or rec.status == "dead":
            return []
        self.records[node_id] = replace(rec, status="dead", since=now)
        return [Transition(node_id, rec.status, "dead", "left")]

    def tick(self, now: float) -> list[Transition]:
        """Age members whose heartbeats stopped; forget long-dead ones; drop stale candidates."""
        out = []
        cfg = self.config
        for key, cand in list(self.pending.items()):
            if now - cand.seen >= cfg.pending_ttl_s:
                del self.pending[key]
        for node_id, rec in list(self.records.items()):
            silent = now - (rec.last_ok if rec.last_ok is not None else rec.since)
            if rec.status == "dead":
                if now - rec.since >= cfg.forget_after_s:
                    del self.records[node_id]
                    out.append(Transition(node_id, "dead", None, "forgotten"))
                continue
            if silent >= cfg.dead_after_s:
                self.records[node_id] = replace(rec, status="dead", since=now)
                out.append(Transition(node_id, rec.status, "dead", f"no heartbeat for {silent:.1f} s"))
            elif silent >= cfg.suspect_after_s and rec.status == "alive":
                self.records[node_id] = replace(rec, status="suspect", since=now)
                out.append(Transition(node_id, "alive", "suspect", f"no heartbeat for {silent:.1f} s"))
        return out

    def due_heartbeats(self, now: float) -> list[tuple[str, str]]:
        """(node id, peer url) to heartbeat now: members every interval (dead ones less often), candidates too."""
        cfg = self.config
        due = []
        for rec in self.records.values():
            interval = cfg.dead_probe_interval_s if rec.status == "dead" else cfg.heartbeat_interval_s
            if now - rec.last_probe >= interval:
                due.append((rec.node_id, rec.peer_url))
        for cand in self.pending.values():
            if now - cand.last_probe >= cfg.heartbeat_interval_s:
                due.append((cand.node_id, cand.peer_url))
        return due

    def members(self) -> list[Member]:
        """Admitted peers only (each answered an authenticated heartbeat at least once)."""
        out = []
        for rec in sorted(self.records.values(), key=lambda r: r.node_id):
            s = rec.state
            if s is None:
                continue
            out.append(
                Member(
                    node_id=rec.node_id,
                    address=rec.address,
                    api_url=rec.api_url,
                    status=rec.status,
                    endpoints={m: list(u) for m, u in s.endpoints.items()},
                    mem_available_mb=s.mem_available_mb,
                    gpu_load=s.gpu_load,
                    cpu_load=s.cpu_load,
                    node_class=s.node_class,
                    mem_total_mb=s.mem_total_mb,
                    priority=s.priority,
                    peer_url=rec.peer_url,
                )
            )
        return out

    def alive_ids(self) -> Sequence[str]:
        return sorted(r.node_id for r in self.records.values() if r.status == "alive")
