"""Where a load-bench request's time went, and which requests make the tail (pure; bench/load_bench.py).

Stages of one answered request, in ms, from the bench's clock and the W3C ``Server-Timing`` entries the
agent (``agent``, ``upstream``) and the model server (``server``, ``exec``) put on the answer:

    late      the load generator's own delay: actual send - the Poisson schedule's send time
    client    client + agent HTTP layer: the bench's send -> answer on loopback, less the agent handler
    agent     the agent's handler less its upstream exchange (resolve, proxy bookkeeping, body read)
    transit   upstream exchange less the model server's own time (sockets, body reception, the server's thread)
    server    the model server's handling less the model call (encoding the answer)
    exec      the model call with its routing and JSON decode (tfrest.handle)
    rtt       the site's simulated RTT to the node that served it
    gc        the agent's and the model server's garbage-collector pauses within their stages (already in them)

``client + agent + transit + server + exec + rtt`` is the reported latency; ``late`` comes before it
(a latency measured from the schedule, as a coordinated-omission-free generator would, adds it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

STAGES = ("late", "client", "agent", "transit", "server", "exec", "rtt", "gc")
TAIL_SHARE = 0.01  # the slow 1 %
ROUND_BEFORE_S, ROUND_AFTER_S = 1.0, 0.5  # "near a round": from 1 s before its solve ended to 0.5 s after


class Answered(Protocol):
    """What the breakdown reads of one request (bench/load_bench.py's Sample)."""

    at: float
    wall: float
    latency_ms: float
    rtt_ms: float
    late_ms: float
    ok: bool
    site: int
    node: str
    timing: dict[str, float]


def stages(x: Answered) -> dict[str, float] | None:
    """One request's stage times (ms); None when its answer carried no complete Server-Timing."""
    t = x.timing
    if not all(k in t for k in ("agent", "upstream", "server", "exec")):
        return None
    loop = x.latency_ms - x.rtt_ms
    return {
        "late": x.late_ms,
        "client": loop - t["agent"],
        "agent": t["agent"] - t["upstream"],
        "transit": t["upstream"] - t["server"],
        "server": t["server"] - t["exec"],
        "exec": t["exec"],
        "rtt": x.rtt_ms,
        "gc": t.get("agent-gc", 0.0) + t.get("server-gc", 0.0),
    }


@dataclass(frozen=True)
class Breakdown:
    """Per stage: p50, p99, mean over all requests and mean over the slowest 1 %; and who the slow 1 % are."""

    requests: int
    tail_requests: int
    tail_from_ms: float  # the latency from which a request counts as the slow 1 %
    p50: dict[str, float]
    p99: dict[str, float]
    mean: dict[str, float]
    tail_mean: dict[str, float]
    tail_by_node: dict[str, int]  # slow requests per node that served them
    tail_off_site: int  # slow requests served by a node other than their site's own
    tail_via_leader: int  # slow requests that went through the leader's agent (their site's node leads)
    via_leader_share: float  # the share of all requests that did (what tail_via_leader compares with)
    tail_near_round: int  # slow requests that ended near a placement round (gather, solve, command)
    near_round_share: float  # the share of all requests that did
    tail_seconds: int  # distinct seconds of the measurement the slow requests fell in
    tail_max_in_second: int  # the most slow requests in one second (bursts vs spread out)
    scheduled_p99_ms: float  # p99 measured from the Poisson schedule (latency + late)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def breakdown(
    samples: Sequence[Answered], node_of_site: Mapping[int, str], leader: str = "", rounds: Sequence[float] = ()
) -> Breakdown | None:
    """The breakdown of the answered requests with timings; None when there are none. A site's requests go
    through the agent of ``node_of_site[site]``; ``leader`` is the node whose agent ran the rounds, whose
    solves ended at ``rounds`` (wall-clock s)."""
    rows = [(x, st) for x in samples if x.ok for st in [stages(x)] if st is not None]
    if not rows:
        return None
    lat = np.array([x.latency_ms for x, _ in rows])
    cut = float(np.percentile(lat, 100 * (1 - TAIL_SHARE)))
    tail = [(x, st) for x, st in rows if x.latency_ms >= cut]
    table = {k: np.array([st[k] for _, st in rows]) for k in STAGES}
    seconds: dict[int, int] = {}
    by_node: dict[str, int] = {}
    for x, _ in tail:
        seconds[int(x.at)] = seconds.get(int(x.at), 0) + 1
        by_node[x.node] = by_node.get(x.node, 0) + 1
    return Breakdown(
        requests=len(rows),
        tail_requests=len(tail),
        tail_from_ms=round(cut, 3),
        p50={k: round(float(np.percentile(v, 50)), 3) for k, v in table.items()},
        p99={k: round(float(np.percentile(v, 99)), 3) for k, v in table.items()},
        mean={k: round(float(v.mean()), 3) for k, v in table.items()},
        tail_mean={k: round(float(np.mean([st[k] for _, st in tail])), 3) for k in STAGES},
        tail_by_node=dict(sorted(by_node.items())),
        tail_off_site=sum(1 for x, _ in tail if x.node != node_of_site.get(x.site)),
        tail_via_leader=sum(1 for x, _ in tail if node_of_site.get(x.site) == leader),
        via_leader_share=round(sum(1 for x, _ in rows if node_of_site.get(x.site) == leader) / len(rows), 3),
        tail_near_round=sum(1 for x, _ in tail if near_round(x.wall, rounds)),
        near_round_share=round(sum(1 for x, _ in rows if near_round(x.wall, rounds)) / len(rows), 3),
        tail_seconds=len(seconds),
        tail_max_in_second=max(seconds.values()),
        scheduled_p99_ms=round(float(np.percentile(lat + table["late"], 99)), 3),
    )


def near_round(wall: float, rounds: Sequence[float]) -> bool:
    """Whether ``wall`` falls from ROUND_BEFORE_S before to ROUND_AFTER_S after one of the ``rounds``."""
    return any(r - ROUND_BEFORE_S <= wall <= r + ROUND_AFTER_S for r in rounds)


def format_breakdown(name: str, b: Breakdown) -> list[str]:
    """Printable lines: the stage table and one line on who the slow 1 % are."""
    lines = [f"{name}: where the time went (ms; {b.requests} answered requests, slow 1 %: >= {b.tail_from_ms:.1f} ms)"]
    lines.append(f"  {'stage':<12}" + "".join(f"{k:>9}" for k in STAGES))
    for label, row in (("p50", b.p50), ("p99", b.p99), ("mean", b.mean), ("slow1% mean", b.tail_mean)):
        lines.append(f"  {label:<12}" + "".join(f"{row[k]:>9.2f}" for k in STAGES))
    nodes = ", ".join(f"{n or '?'} {c}" for n, c in b.tail_by_node.items())
    lines.append(
        f"  slow 1 %: {b.tail_requests} requests in {b.tail_seconds} distinct seconds (at most "
        f"{b.tail_max_in_second} in one); served by {nodes}; {b.tail_off_site} off their site's node; "
        f"{b.tail_via_leader} through the leader's agent (which carries {100 * b.via_leader_share:.0f} % of all); "
        f"{b.tail_near_round} near a placement round ({100 * b.near_round_share:.0f} % of all are); "
        f"p99 from the schedule (with 'late') {b.scheduled_p99_ms:.1f} ms"
    )
    return lines
