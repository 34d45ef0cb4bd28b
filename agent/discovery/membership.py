"""Membership: a pure state machine over peers (alive / suspect / dead), driven by events with ``now``.

Events: a peer was *advertised* (mDNS or a seed), a *heartbeat* to it succeeded or failed, it *left*
gracefully, or time passed (*tick*). Liveness rests on heartbeats alone: a crashed node sends no mDNS
goodbye and its records linger for ~20 minutes, so mDNS only says who to heartbeat.

    alive --no heartbeat for suspect_after_s--> suspect --... dead_after_s--> dead --forget_after_s--> gone
      ^-------------------- any successful heartbeat ----------------------------'
    left (graceful stop) -> dead at once

Duplicate node ids: the first claimant stays while alive; another address claiming the same id is
ignored (logged once by the caller). A peer claiming our own id is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.errors import PeerError
from agent.peers import Member


@dataclass(frozen=True)
class MembershipConfig:
    heartbeat_interval_s: float = 0.5
    suspect_after_s: float = 1.0
    dead_after_s: float = 2.0
    dead_probe_interval_s: float = 2.0
    forget_after_s: float = 600.0


@dataclass(frozen=True)
class PeerState:
    """A peer's answer to a heartbeat (GET /peer/state)."""

    node_id: str
    api_url: str
    endpoints: Mapping[str, tuple[str, ...]]
    mem_available_mb: float
    mem_total_mb: float
    gpu_load: float | None
    cpu_load: float
    node_class: str
    compute: float
    term: int
    leader: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _num(data: Mapping[str, Any], key: str, optional: bool = False) -> float | None:
    v = data.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise PeerError(f"heartbeat field {key!r} is not a non-negative number")
    return float(v)


def parse_peer_state(data: Any, expected_id: str | None = None) -> PeerState:
    """Validate a heartbeat answer; raises PeerError on garbage."""
    if not isinstance(data, dict):
        raise PeerError("heartbeat answer is not a JSON object")
    node_id = data.get("node_id")
    if not isinstance(node_id, str) or not node_id or len(node_id) > 63:
        raise PeerError("heartbeat answer has no valid node_id")
    if expected_id is not None and node_id != expected_id:
        raise PeerError(f"expected node {expected_id!r}, {node_id!r} answered")
    api_url = data.get("api_url")
    if not isinstance(api_url, str) or not api_url.startswith("http"):
        raise PeerError("heartbeat answer has no valid api_url")
    raw = data.get("endpoints")
    if not isinstance(raw, dict) or len(raw) > 1000:
        raise PeerError("heartbeat field 'endpoints' is not a map of model to URLs")
    endpoints: dict[str, tuple[str, ...]] = {}
    for model, urls in raw.items():
        if not isinstance(urls, list) or not all(isinstance(u, str) and u.startswith("http") for u in urls):
            raise PeerError(f"heartbeat endpoints of {str(model)[:64]!r} are not URLs")
        endpoints[str(model)] = tuple(urls)
    term = data.get("term", 0)
    leader = data.get("leader")
    if isinstance(term, bool) or not isinstance(term, int) or term < 0:
        raise PeerError("heartbeat field 'term' is not a non-negative integer")
    if leader is not None and not isinstance(leader, str):
        raise PeerError("heartbeat field 'leader' is not a string")
    known = {"node_id", "api_url", "endpoints", "mem_available_mb", "mem_total_mb", "gpu_load", "cpu_load",
             "node_class", "compute", "term", "leader"}  # fmt: skip
    return PeerState(
        node_id=node_id,
        api_url=api_url.rstrip("/"),
        endpoints=endpoints,
        mem_available_mb=_num(data, "mem_available_mb") or 0.0,
        mem_total_mb=_num(data, "mem_total_mb") or 0.0,
        gpu_load=_num(data, "gpu_load", optional=True),
        cpu_load=_num(data, "cpu_load") or 0.0,
        node_class=str(data.get("node_class", "default"))[:64],
        compute=_num(data, "compute") or 0.0,
        term=term,
        leader=leader,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
        self.records: dict[str, Record] = {}
        self.conflicts: set[tuple[str, str]] = set()  # (node id, api url) claims we ignore

    def advertised(self, node_id: str, api_url: str, address: str, now: float) -> list[Transition]:
        """mDNS or a seed says ``node_id`` is at ``api_url``: heartbeat it (it is not alive until it answers)."""
        if node_id == self.self_id:
            if api_url != "":
                self.conflicts.add((node_id, api_url))
            return []
        rec = self.records.get(node_id)
        if rec is None:
            self.records[node_id] = Record(node_id, api_url, address, "suspect", None, -math.inf, now)
            return [Transition(node_id, None, "suspect", "advertised")]
        if rec.api_url != api_url:
            if rec.status == "dead":  # the node came back at another address
                self.records[node_id] = replace(rec, api_url=api_url, address=address, last_probe=-math.inf)
            else:
                self.conflicts.add((node_id, api_url))
        return []

    def heartbeat_ok(self, node_id: str, state: PeerState, now: float) -> list[Transition]:
        rec = self.records.get(node_id)
        if rec is None:
            return []
        new = replace(rec, status="alive", last_ok=now, state=state, since=rec.since if rec.status == "alive" else now)
        self.records[node_id] = new
        return [] if rec.status == "alive" else [Transition(node_id, rec.status, "alive", "heartbeat answered")]

    def heartbeat_sent(self, node_id: str, now: float) -> None:
        rec = self.records.get(node_id)
        if rec is not None:
            self.records[node_id] = replace(rec, last_probe=now)

    def left(self, node_id: str, now: float) -> list[Transition]:
        rec = self.records.get(node_id)
        if rec is None or rec.status == "dead":
            return []
        self.records[node_id] = replace(rec, status="dead", since=now)
        return [Transition(node_id, rec.status, "dead", "left")]

    def tick(self, now: float) -> list[Transition]:
        """Age peers whose heartbeats stopped; forget long-dead ones."""
        out = []
        cfg = self.config
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
        """(node id, api url) to heartbeat now: live peers every interval, dead ones less often."""
        cfg = self.config
        due = []
        for rec in self.records.values():
            interval = cfg.dead_probe_interval_s if rec.status == "dead" else cfg.heartbeat_interval_s
            if now - rec.last_probe >= interval:
                due.append((rec.node_id, rec.api_url))
        return due

    def members(self) -> list[Member]:
        out = []
        for rec in sorted(self.records.values(), key=lambda r: r.node_id):
            s = rec.state
            out.append(
                Member(
                    node_id=rec.node_id,
                    address=rec.address,
                    api_url=rec.api_url,
                    status=rec.status,
                    endpoints={m: list(u) for m, u in s.endpoints.items()} if s else {},
                    mem_available_mb=s.mem_available_mb if s else 0.0,
                    gpu_load=s.gpu_load if s else None,
                    cpu_load=s.cpu_load if s else 0.0,
                    node_class=s.node_class if s else "default",
                    mem_total_mb=s.mem_total_mb if s else 0.0,
                    priority=_int(s.extra.get("priority", 0)) if s else 0,
                )
            )
        return out

    def alive_ids(self) -> Sequence[str]:
        return sorted(r.node_id for r in self.records.values() if r.status == "alive")
