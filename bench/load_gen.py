"""The load bench's clients: Poisson senders that run without a break from warm-up through measurement.

Each client keeps one ``httpx.AsyncClient`` (its connections) for the whole run and sends on its own
Poisson schedule; a request is recorded when its *scheduled* send time falls in the measurement window,
so the window is a slice of steady load, not a cold start (building 30 clients and their first
connections inside the window once stalled the generator's event loop for ~1.5 s and made the tail).
Each sample carries the generator's lateness (actual send - scheduled send) next to its latency, so a
late generator shows instead of hiding (coordinated omission), and the answer's Server-Timing entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

DRAIN_S = 15.0  # after the window, how long a client waits for its requests still in flight


@dataclass(frozen=True)
class Sample:
    """One request as the bench saw it (times in ms; ``at`` monotonic s when it ended)."""

    at: float
    wall: float  # time.time() when it ended (to set beside the leader's round times)
    latency_ms: float  # sent -> answered on loopback + the site's RTT to the node that served it
    rtt_ms: float  # that RTT (included in latency_ms)
    late_ms: float  # the load generator's delay: actual send - the Poisson schedule's send time
    ok: bool
    why: str
    site: int
    node: str
    timing: dict[str, float]  # the Server-Timing entries: agent, upstream (agent's), server, exec (model server's)


@dataclass
class Window:
    """The measurement window (monotonic s): requests scheduled in [start, end) are recorded; clients stop
    sending at ``end``. Both are infinite until the warm-up is over."""

    start: float = math.inf
    end: float = math.inf

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class ClientSpec:
    """One client: where it sends, as whom, from which site, what."""

    index: int
    site: int
    url: str
    rtts: Mapping[str, float]
    image: list[float]
    rate: float
    seed: int


def parse_server_timing(value: str) -> dict[str, float]:
    """``name;dur=1.5, other;dur=2`` -> {"name": 1.5, "other": 2.0}; entries without a number are skipped."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, val = param.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    out[name] = float(val)
    return out


async def client(spec: ClientSpec, window: Window, record: list[Sample]) -> None:
    """Poisson arrivals at ``spec.rate`` until ``window.end``, each a predict through the site's agent."""
    rng = random.Random(spec.seed * 1000 + spec.index)
    headers = {
        "X-Peerserve-Client": f"c{spec.index}",
        "X-Peerserve-RTT": ",".join(f"{n}={v}" for n, v in spec.rtts.items()),
    }
    tasks: set[asyncio.Task[None]] = set()
    # Idle connections are dropped by the client before the agent's keep-alive timeout (uvicorn: 5 s) can
    # close them under a request in flight (a ReadError that says nothing about placement).
    limits = httpx.Limits(keepalive_expiry=2.0)
    body = {"instances": [spec.image]}
    async with httpx.AsyncClient(timeout=10.0, headers=headers, limits=limits) as http:
        nxt = time.monotonic() + rng.expovariate(spec.rate)
        while nxt < window.end:
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if nxt >= window.end:  # the window was set while this client slept
                break
            task = asyncio.create_task(_one(http, spec, body, nxt, record if window.holds(nxt) else None))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            nxt += rng.expovariate(spec.rate)
        if tasks:
            await asyncio.wait(tasks, timeout=DRAIN_S)


async def _one(
    http: httpx.AsyncClient, spec: ClientSpec, body: dict[str, Any], intended: float, record: list[Sample] | None
) -> None:
    started = time.monotonic()
    timing: dict[str, float] = {}
    try:
        r = await http.post(spec.url, json=body)
        ok, why = r.status_code == 200, f"HTTP {r.status_code} {r.headers.get('x-peerserve-error', '')}".strip()
        node = r.headers.get("x-peerserve-node", "")
        timing = parse_server_timing(r.headers.get("server-timing", ""))
    except httpx.HTTPError as exc:
        ok, node, why = False, "", type(exc).__name__
    ended = time.monotonic()
    rtt = spec.rtts.get(node, 0.0)
    if record is not None:
        late = 1000.0 * max(0.0, started - intended)
        ms = 1000.0 * (ended - started) + rtt
        record.append(Sample(ended, time.time(), ms, rtt, late, ok, "" if ok else why, spec.site, node, timing))
