"""The peers this node knew, kept across restarts (``known-peers.json`` in the data directory).

After a crash, a systemd restart or a power cut the agent heartbeats them at once instead of waiting for
mDNS or for their own probes of a node they marked dead, and the election knows whom to expect back
(coordinator_election: a faster first election). Only a hint: admission still needs each peer's
authenticated answer at that address. Bounded: at most MAX_KNOWN entries, none older than FORGET_AFTER_S.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.durable import write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "known-peers.json"
MAX_KNOWN = 256
FORGET_AFTER_S = 24 * 3600.0  # a peer not seen alive for a day is not expected back


@dataclass(frozen=True)
class KnownPeer:
    """A peer seen alive: its node id, where its peer listener answered, and when (wall clock)."""

    node_id: str
    peer_url: str
    seen_at: float


def merge(
    known: Sequence[KnownPeer], alive: Iterable[tuple[str, str]], now: float, limit: int = MAX_KNOWN
) -> list[KnownPeer]:
    """``known`` updated with the (node id, peer url) pairs alive ``now``: one entry per node, the most
    recently seen first, at most ``limit``, none older than FORGET_AFTER_S."""
    latest: dict[str, KnownPeer] = {}
    for p in known:
        if now - p.seen_at < FORGET_AFTER_S and (p.node_id not in latest or p.seen_at > latest[p.node_id].seen_at):
            latest[p.node_id] = p
    for node_id, peer_url in alive:
        if node_id and peer_url:
            latest[node_id] = KnownPeer(node_id, peer_url, now)
    return sorted(latest.values(), key=lambda p: (-p.seen_at, p.node_id))[:limit]


def parse(data: object) -> list[KnownPeer]:
    """The entries of a known-peers file; anything malformed is skipped (it is only a hint)."""
    out = []
    for e in data if isinstance(data, list) else []:
        if not isinstance(e, dict):
            continue
        node_id, peer_url, seen_at = e.get("node_id"), e.get("peer_url"), e.get("seen_at")
        if isinstance(node_id, str) and isinstance(peer_url, str) and peer_url.startswith("https://") and (
                isinstance(seen_at, (int, float)) and not isinstance(seen_at, bool)):  # fmt: skip
            out.append(KnownPeer(node_id[:128], peer_url[:256], float(seen_at)))
    return out[:MAX_KNOWN]


def load(data_dir: Path) -> list[KnownPeer]:
    """What the last run saved; [] when there is no file or it cannot be read."""
    try:
        return parse(json.loads((data_dir / FILE_NAME).read_text()))
    # RecursionError: json.loads of deeply nested arrays; OverflowError: float() of a 400-digit seen_at (review27b F1)
    except (OSError, ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.warning("ignoring unreadable %s: %s", data_dir / FILE_NAME, exc)
        return []


def save(data_dir: Path, peers: Sequence[KnownPeer]) -> None:
    """Replace the file atomically and durably (agent/durable.py: write, fsync, rename, fsync of the folder; without
    the last, a power cut soon after the rename can lose the new file's directory entry, and boards lose power);
    errors are logged, never raised."""
    path = data_dir / FILE_NAME
    tmp = path.with_suffix(".tmp")
    body = json.dumps([{"node_id": p.node_id, "peer_url": p.peer_url, "seen_at": p.seen_at} for p in peers])
    try:
        write_atomic(path, body.encode(), tmp=tmp)
    except OSError as exc:
        log.warning("cannot save %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
