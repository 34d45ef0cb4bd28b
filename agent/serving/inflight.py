"""Requests this agent's proxy has in flight per upstream server: the live queue lengths of endpoint choice.

The proxy calls ``begin(url, now)`` once a request's last byte went to a model server and ``end(token)`` when
its response head came (or the exchange failed): the time the server holds it, ``service_ms`` (review14a F2: a
client's stalled upload or slow read of the answer is the client's time, and was counted, steering other
clients away from an idle server; ``routes.AtServer``). ``counts(now)`` is what ``decisions.spread_choice`` weighs
against the plan's queue (an endpoint absent here is idle: live 0). It counts only this agent's own
requests (other agents proxy to the same server too), which is what one agent can know without asking.

Bounded: at most ``max_tracked`` requests are tracked at once (a request beyond that is sent but not
counted; the agent's own connection cap keeps far fewer in flight), and a request still open after
``stale_s`` stops counting (a response stream the server never ends, or an ``end`` that never came),
so a leak can never pin an endpoint as busy. Pure bookkeeping: the clock is passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_TRACKED = 4096  # requests counted at once (the HTTP layer's concurrency cap is far below)
STALE_S = 120.0  # a request open longer than this no longer counts as queued


@dataclass(frozen=True)
class Token:
    """One counted request: its upstream base URL and when it was sent."""

    id: int
    url: str
    started: float


class InFlight:
    """Open requests per upstream base URL (see the module docstring for the bounds)."""

    def __init__(self, max_tracked: int = MAX_TRACKED, stale_s: float = STALE_S) -> None:
        self.max_tracked = max_tracked
        self.stale_s = stale_s
        self._open: dict[int, Token] = {}
        self._next = 0
        self.dropped = 0  # requests not counted because the table was full

    def begin(self, url: str, now: float) -> Token | None:
        """Count one request to ``url``; None (not counted) when the table is full even after pruning."""
        if len(self._open) >= self.max_tracked:
            self._prune(now)
        if len(self._open) >= self.max_tracked:
            self.dropped += 1
            return None
        self._next += 1
        token = Token(self._next, url, now)
        self._open[token.id] = token
        return token

    def end(self, token: Token | None) -> None:
        """The request is answered or failed (idempotent; None is a request that was not counted)."""
        if token is not None:
            self._open.pop(token.id, None)

    def counts(self, now: float) -> dict[str, int]:
        """Requests in flight per upstream URL, stale ones pruned; URLs with none are absent (the rule reads 0)."""
        self._prune(now)
        out: dict[str, int] = {}
        for token in self._open.values():
            out[token.url] = out.get(token.url, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self._open)

    def _prune(self, now: float) -> None:
        stale = [t.id for t in self._open.values() if now - t.started > self.stale_s]
        for i in stale:
            del self._open[i]
        if stale:
            log.warning("%d proxied requests open over %.0f s no longer count as queued", len(stale), self.stale_s)
