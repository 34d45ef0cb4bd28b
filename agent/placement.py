"""What the leader does each round, as pure functions: gather -> snapshot -> desired sets.

``build_snapshot`` turns what the agents report (node stats, model stats, a window of request records)
into a solver.Snapshot: one request per (client, model) stream active in the window, its RTT to each
node from the client's latest report (UNKNOWN_RTT_MS where it measured none), execution time per node
from the median of proxied latencies there, else the catalogue's profile for the node's class.

With ``objective="queue"`` (issue 16) a stream is a client *site* and a model instead: clients whose RTT
vectors agree within ``SITE_RTT_MS`` on every node are one site (a room of phones is one stream), the
stream's ``rate`` is its requests in the window over the window's length, and each model carries its
per-instance ``throughput_rps`` per node: the catalogue's for the node's class, or 1000 / the measured
service time where enough were measured and that is lower. A proxied latency includes the wait in the
instance's queue, and taking it whole closes a loop under load (queueing makes instances look slower, the
plan asks for more on the same cores, they get slower still: seen in bench/load_bench.py on an overloaded
machine); so the service time is a low quantile (``SERVICE_QUANTILE``) of the measured latencies, the
requests that found the instance idle, and the queue model adds the queueing delay itself. Execution
times for the queue objective come from the same quantile; the thesis objective keeps the median. A node
without measurements of a model is priced at the catalogue's figure scaled by what its class's measured
nodes show (``class_scale``), so unmeasured nodes do not look better than measured ones of the same kind.

A node's instances share its cores (``cores``, reported by the agent: its setting or os.cpu_count()), and
the queue model limits each node's busy work to them (solver.node_cpu). On a saturated node even an idle
instance's request waits for a CPU, so every measured latency is stretched by the contention; the
leader divides it out (``contention``: the machine's runnable threads per CPU, 1-minute load average
over ``os.cpu_count()``, 1 to ``MAX_SLOWDOWN``; per machine, not per configured ``cores``, since agents
sharing one machine, as in bench/load_bench.py, share its CPUs) and the queue model counts the load. That
figure is the node's own word, so the leader divides out no more than the node's own traffic explains
(``explained_contention``: its requests in flight per core, served count x median latency per catalogue
model, the median of what other nodes logged where there is enough; a node that reports no cores gets
none); contention from elsewhere stays in the measured service times (it will not leave with the streams).
More instances on a saturated node is never the plan's answer: the core row caps them whatever the
measurements say.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agent.catalogue import Catalogue
from agent.decisions import UNKNOWN_RTT_MS, memory_fits
from peerserve import wire

MIN_LATENCY_SAMPLES = 5  # fewer measured proxy latencies than this: trust the catalogue's profile
SERVICE_QUANTILE = 0.2  # the service-time estimate: at utilisation <= 0.8 at least this share waits for nothing
SITE_RTT_MS = 2.0  # clients whose RTTs to every node fall in the same 2 ms bucket form one site
MAX_SITES = 256  # (site, model) streams; past it buckets widen (2,000 made-up sites: a 25 s solve)
MAX_SLOWDOWN = 8.0  # the most contention divided out of a node's measured service times
# (client, model) streams under the thesis objective (one instance each, the thesis's largest table is 1,000
# requests): past it the busiest streams in the window are kept (2,000 made-up client ids: an 8 s solve)
MAX_THESIS_STREAMS = 1000
# what the snapshot reads of a node's per-model usage (its /stats/models entry): a report keeps these only, so a
# member's answer of 200 models x 16 made-up keys (~560 KB of objects, kept a round and then as the stale stand-in,
# and sent to the solver worker every round) costs the leader ~40 KB
USAGE_KEYS = ("requests_since_provisioned", "last_request", "provisioned_at")
_Stream = TypeVar("_Stream", bound=Mapping[str, Any])


@dataclass(frozen=True)
class NodeReport:
    """One agent's answer to the leader's gathering: /stats/node and /stats/models."""

    node_id: str
    mem_available_mb: float
    mem_total_mb: float
    compute: float
    node_class: str
    instances: Mapping[str, int]
    usage: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ready: Mapping[str, int] = field(default_factory=dict)
    cores: float | None = None  # the parallel capacity its instances share (None: an agent that does not say)
    concurrency: float | None = None  # requests one of its instances serves at once (None: 1, as before)
    load_per_cpu: float | None = None  # runnable threads per CPU of its machine, 1-minute average (None: unknown)

    def contention(self) -> float:
        """How much a saturated machine stretches a service time: runnable threads per CPU, in [1, MAX_SLOWDOWN]."""
        if self.load_per_cpu is None:
            return 1.0
        return min(max(self.load_per_cpu, 1.0), MAX_SLOWDOWN)


@dataclass(frozen=True)
class RequestRecord:
    ts: float
    model: str
    client: str
    rtt_ms: Mapping[str, float]
    node: str | None
    latency_ms: float | None
    status: int
    logged_by: str | None = field(default=None, compare=False)  # whose request log held it (None: unknown)


def _node_class(v: Any) -> str:
    """A node class as the solver's snapshot takes it (one bad report fails its own gather, never the round)."""
    if not isinstance(v, str) or not wire.NODE_CLASS.fullmatch(v):
        raise ValueError(f"node_class {str(v)[:80]!r} is not a node class")
    return v


def parse_node_report(stats_node: Mapping[str, Any], stats_models: Mapping[str, Any]) -> NodeReport:
    """Build a NodeReport from the two JSON answers; raises KeyError/TypeError/ValueError on garbage."""
    counts: dict[str, int] = {}
    ready: dict[str, int] = {}
    for inst in stats_node["instances"]:
        if inst.get("running") and not inst.get("draining"):  # a draining server is on its way out
            counts[str(inst["model"])] = counts.get(str(inst["model"]), 0) + 1
        if inst.get("ready"):
            ready[str(inst["model"])] = ready.get(str(inst["model"]), 0) + 1
    cores = _cores(stats_node.get("cores"))
    return NodeReport(
        node_id=str(stats_node["node_id"]),
        mem_available_mb=float(stats_node["mem_available_mb"]),
        mem_total_mb=float(stats_node["mem_total_mb"]),
        compute=float(stats_node["compute"]),
        node_class=_node_class(stats_node.get("node_class", "default")),
        instances=counts,
        usage={str(m): {k: v[k] for k in USAGE_KEYS if k in v} for m, v in stats_models.get("models", {}).items()},
        ready=ready,
        cores=cores,
        # slots are at most the cores: without a (plausible) core count a peer's concurrency counts for nothing
        # (else 1,024 slots on a node with no limit would draw every stream)
        concurrency=None if cores is None else _concurrency(stats_node.get("concurrency")),
        load_per_cpu=_positive(stats_node.get("load_per_cpu"), zero=True),
    )


def explained_contention(
    records: Iterable[RequestRecord], window_s: float, cores: Mapping[str, float | None], known: Container[str]
) -> dict[str, float]:
    """Per node: the slowdown its own served traffic of catalogue models can explain, at least 1: its requests
    in flight (per model, served count x median measured latency over the window, Little's law) per core.

    A node's ``load_per_cpu`` is its own word: one reporting 8 would have its latencies divided by 8 and
    attract every stream. Only the contention its own measured traffic explains is divided out; the median
    keeps one made-up record of a huge latency from explaining anything (the median of the records other
    nodes logged, where there are enough, so a node cannot move it with its own), models outside the
    catalogue count for nothing, and a node that reports no ``cores`` gets no allowance (1)."""
    served: dict[tuple[str, str], list[float]] = {}
    witnessed: dict[tuple[str, str], list[float]] = {}  # logged by another node: not the served node's word
    for r in records:
        if r.node is None or r.latency_ms is None or not 200 <= r.status < 300 or r.model not in known:
            continue
        if math.isfinite(r.latency_ms) and r.latency_ms >= 0:
            served.setdefault((r.node, r.model), []).append(r.latency_ms)
            if r.logged_by is not None and r.logged_by != r.node:
                witnessed.setdefault((r.node, r.model), []).append(r.latency_ms)
    busy: dict[str, float] = {}
    for key, latencies in served.items():
        others = witnessed.get(key, [])
        typical = statistics.median(others if len(others) >= MIN_LATENCY_SAMPLES else latencies)
        busy[key[0]] = busy.get(key[0], 0.0) + len(latencies) * typical / 1000.0
    out: dict[str, float] = {}
    for node, b in busy.items():
        c = cores.get(node)
        out[node] = 1.0 if c is None else max(1.0, b / window_s / c)
    return out


def _positive(value: Any, zero: bool = False) -> float | None:
    """A finite positive float (or zero, where allowed) from a report's optional field; None otherwise."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except OverflowError:  # an int past a float's range (10**400 in a peer's JSON)
        return None
    return x if math.isfinite(x) and (x > 0 or (zero and x == 0)) else None


MIN_CORES, MAX_CORES = 1 / 64, 4096.0  # solver.snapshot's bounds (not imported: followers carry no numpy)


def _cores(value: Any) -> float | None:
    """A peer's reported cores within the snapshot's bounds (outside them: unknown, no limit assumed; one peer's
    out-of-range figure must not make the whole round's snapshot invalid, nor a junk one its whole report)."""
    return _within(value, MIN_CORES, MAX_CORES)


def _within(value: Any, lo: float, hi: float) -> float | None:
    """A peer's optional figure if it is a number in [lo, hi], else None (junk or out of range: unknown)."""
    try:
        x = _positive(value)
    except (TypeError, ValueError):  # an older or odd peer's field must not cost the whole report
        return None
    return x if x is not None and lo <= x <= hi else None


MIN_CONCURRENCY, MAX_CONCURRENCY = 1.0, 1024.0  # solver.snapshot's bounds (not imported: no numpy here)


def _concurrency(value: Any) -> float | None:
    """A peer's reported instance concurrency within the snapshot's bounds (outside them or junk: unknown, 1)."""
    return _within(value, MIN_CONCURRENCY, MAX_CONCURRENCY)


MAX_LATENCY_MS = 120_000.0  # a proxied request's latency above this is not a measurement (the proxy gives up at 30 s)
MAX_RTT_MS = 60_000.0  # a round trip above this is not a LAN's


def _ms(value: Any, bound: float) -> float | None:
    """A peer's reported duration (ms) if it is a finite number in [0, bound], else None (not a measurement)."""
    x = _positive(value, zero=True)
    return x if x is not None and x <= bound else None


def parse_request(raw: Mapping[str, Any]) -> RequestRecord:
    """A peer's request record; durations that are not plausible measurements (NaN, infinite, negative, past
    ``MAX_LATENCY_MS`` / ``MAX_RTT_MS``) are dropped: one made-up figure must not price a node out of the plan
    (a 1e308 ms latency gave a service rate of 1e-308 req/s and overflowed the solve)."""
    rtts = raw.get("rtt_ms") or {}
    rtt_ms = {str(k): _ms(v, MAX_RTT_MS) for k, v in rtts.items()}
    return RequestRecord(
        ts=float(raw["ts"]),
        model=str(raw["model"]),
        client=str(raw["client"]),
        rtt_ms={k: v for k, v in rtt_ms.items() if v is not None},
        node=None if raw.get("node") is None else str(raw["node"]),
        latency_ms=_ms(raw.get("latency_ms"), MAX_LATENCY_MS),
        status=_status(raw["status"]),
    )


def _status(value: Any) -> int:
    """An HTTP status code (three digits, 100-999 as HTTP's syntax allows: an upstream model server's odd code is
    logged as it came) or ValueError: a peer's 10**4000 must not ride along in every record."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"request record status must be an HTTP status code, not {type(value).__name__}")
    if isinstance(value, str) and not (len(value) == 3 and value.isdigit()):
        raise ValueError("request record status must be an HTTP status code")
    status = int(value)
    if not 100 <= status <= 999:
        raise ValueError(f"request record status {status} is not an HTTP status code")
    return status


def build_snapshot(
    nodes: Sequence[NodeReport],
    records: Iterable[RequestRecord],
    catalogue: Catalogue,
    now_s: float,
    objective: str = "thesis",
    window_s: float | None = None,
) -> dict[str, Any]:
    """The solver snapshot (JSON form) for this round; ``objective="queue"`` needs the window's length."""
    records = list(records)
    ids = [n.node_id for n in nodes]
    node_set = set(ids)
    known = set(catalogue.models)
    queue_aware = objective in ("queue", "queue-p99")
    slowdown = {n.node_id: n.contention() if queue_aware else 1.0 for n in nodes}
    if queue_aware and window_s is not None and window_s > 0:
        own = explained_contention(records, window_s, {n.node_id: n.cores for n in nodes}, known)
        slowdown = {n: min(v, own.get(n, 1.0)) for n, v in slowdown.items()}  # a node's word, checked
    streams: dict[tuple[str, str], dict[str, float]] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    for r in reversed(sorted(records, key=lambda r: r.ts)):  # newest first: a stream's RTT to a node is its latest
        if r.model not in known or (r.status >= 500 and r.status != 503):
            continue
        rtts = streams.setdefault((r.client, r.model), {})
        if len(rtts) < len(node_set):  # a node not reported yet (the usual stream: only its newest record is read)
            for node_id, rtt in r.rtt_ms.items():
                if node_id in node_set and node_id not in rtts:
                    rtts[node_id] = rtt
        if r.node is not None and r.latency_ms is not None and 200 <= r.status < 300:
            latencies.setdefault((r.node, r.model), []).append(r.latency_ms / slowdown.get(r.node, 1.0))
    for measured in latencies.values():
        measured.sort()  # once: the quantiles below (class_scale, exec_ms, _throughput) sort again in linear time
    classes = {n.node_id: n.node_class for n in nodes}

    scale = class_scale(latencies, classes, catalogue) if queue_aware else {}

    known_exec: dict[tuple[str, str], float] = {}  # one figure per (node, model), not one sort per stream

    def exec_ms(node: str, model: str) -> float:
        if (node, model) in known_exec:
            return known_exec[(node, model)]
        measured = latencies.get((node, model))
        if measured and len(measured) >= MIN_LATENCY_SAMPLES:
            value = service_ms(measured) if queue_aware else float(statistics.median(measured))
        else:
            value = catalogue.models[model].expected_exec_ms(classes[node]) * scale.get((classes[node], model), 1.0)
        known_exec[(node, model)] = value
        return value

    requests = [
        {
            "model": model,
            "client": client,
            "rtt_ms": {n: rtts.get(n, UNKNOWN_RTT_MS) for n in ids},
            "exec_ms": {n: exec_ms(n, model) for n in ids},
        }
        for (client, model), rtts in sorted(streams.items())
    ]
    models = [{"name": m.name, "mem_mb": m.mem_mb, "compute": m.compute} for m in catalogue.models.values()]
    extra: dict[str, Any] = {}
    if not queue_aware and len(requests) > MAX_THESIS_STREAMS:
        requests = busiest_streams(requests, records_kept(records, known), MAX_THESIS_STREAMS)
    if queue_aware:
        if window_s is None or window_s <= 0:
            raise ValueError("the queue objective needs a positive window_s")
        counts: dict[tuple[str, str], int] = {}
        for r in records_kept(records, known):
            counts[(r.client, r.model)] = counts.get((r.client, r.model), 0) + 1
        requests = group_sites(requests, counts, window_s)
        for entry, spec in zip(models, catalogue.models.values(), strict=True):
            entry["throughput_rps"] = {
                n: _throughput(spec, classes[n], latencies.get((n, spec.name)), scale.get((classes[n], spec.name), 1.0))
                for n in ids
            }
        extra = {"objective": objective}
    out = {
        **extra,
        "now_s": now_s,
        "nodes": [
            {
                "id": n.node_id,
                "mem_available_mb": unpromised_mb(n, catalogue),
                "mem_total_mb": n.mem_total_mb,
                "compute": n.compute,
                "instances": {m: c for m, c in n.instances.items() if m in known},
                "usage": {
                    m: {
                        "requests": int(u.get("requests_since_provisioned") or 0),
                        "last_request_s": u.get("last_request"),
                        "provisioned_s": u.get("provisioned_at"),
                    }
                    for m, u in n.usage.items()
                    if m in known
                },
            }
            for n in nodes
        ],
        "models": models,
        "requests": requests,
    }
    if queue_aware:
        for entry, n in zip(out["nodes"], nodes, strict=True):
            entry["node_class"] = n.node_class
            if n.cores is not None:
                entry["cores"] = n.cores
            if n.concurrency is not None:
                entry["concurrency"] = n.concurrency
    return out


def unpromised_mb(node: NodeReport, catalogue: Catalogue) -> float:
    """The memory a plan may still give out on ``node``: free now, and never more than its total less its running
    servers at their catalogue size. A node refuses a desired set whose servers' mem_mb passes its total
    (agent.decisions.memory_refusal); servers measuring less than their mem_mb leave more free than that."""
    promised = sum(c * catalogue.models[m].mem_mb for m, c in node.instances.items() if m in catalogue.models and c > 0)
    return max(0.0, min(node.mem_available_mb, node.mem_total_mb, node.mem_total_mb - promised))


def records_kept(records: Iterable[RequestRecord], known: set[str]) -> list[RequestRecord]:
    """The records that count as demand: known models, not failed by the cluster (503 counts)."""
    return [r for r in records if r.model in known and not (r.status >= 500 and r.status != 503)]


def busiest_streams(requests: Sequence[_Stream], records: Iterable[RequestRecord], limit: int) -> list[_Stream]:
    """The ``limit`` (client, model) streams with the most records in the window (ties: by client, model)."""
    counts: dict[tuple[str, str], int] = {}
    for r in records:
        counts[(r.client, r.model)] = counts.get((r.client, r.model), 0) + 1
    ranked = sorted(requests, key=lambda q: (-counts.get((q["client"], q["model"]), 0), q["client"], q["model"]))
    return sorted(ranked[:limit], key=lambda q: (q["client"], q["model"]))


def group_sites(
    streams: Sequence[Mapping[str, Any]], counts: Mapping[tuple[str, str], int], window_s: float
) -> list[dict[str, Any]]:
    """Merge per-client streams into (site, model) streams with a rate in requests/s over the window.

    A site is the clients whose RTT to every node rounds to the same ``SITE_RTT_MS`` bucket; its RTT
    and execution rows are the members' means, its ``client`` names the first member and the count.
    """
    width = SITE_RTT_MS
    sites = _bucketed(streams, width)
    while len(sites) > MAX_SITES and width < 1e9:  # clients report any RTTs: coarser buckets, a bounded solve
        width *= 2
        sites = _bucketed(streams, width)
    out = []
    for members in sites.values():
        first = members[0]
        nodes = list(first["rtt_ms"])
        total = sum(counts.get((m["client"], m["model"]), 0) for m in members)
        out.append(
            {
                "model": first["model"],
                "client": f"site:{first['client']}+{len(members) - 1}",
                "rtt_ms": {n: statistics.fmean(m["rtt_ms"][n] for m in members) for n in nodes},
                "exec_ms": {n: statistics.fmean(m["exec_ms"][n] for m in members) for n in nodes},
                "rate": total / window_s,
            }
        )
    return out


def _bucketed(streams: Sequence[Mapping[str, Any]], width: float) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    sites: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for s in streams:
        sites.setdefault((s["model"], *(round(v / width) for _, v in sorted(s["rtt_ms"].items()))), []).append(s)
    return sites


def service_ms(measured: Sequence[float]) -> float:
    """An instance's service time from proxied latencies: their SERVICE_QUANTILE (queueing waits excluded)."""
    ordered = sorted(measured)
    return float(ordered[int(SERVICE_QUANTILE * (len(ordered) - 1))])


def _throughput(spec: Any, node_class: str, measured: Sequence[float] | None, scale: float = 1.0) -> float:
    declared = float(spec.expected_throughput_rps(node_class))
    if measured and len(measured) >= MIN_LATENCY_SAMPLES:
        return min(declared, 1000.0 / max(service_ms(measured), 0.1))
    if scale > 1.0:  # the class runs slower than declared where measured: so will this node
        return min(declared, 1000.0 / max(float(spec.expected_exec_ms(node_class)) * scale, 0.1))
    return declared


def class_scale(
    latencies: Mapping[tuple[str, str], Sequence[float]], classes: Mapping[str, str], catalogue: Catalogue
) -> dict[tuple[str, str], float]:
    """(node class, model) -> median over the class's measured nodes of service time / the catalogue's.

    A node that runs no instance of a model has no measurements and would be priced at the catalogue's
    figure while its measured peers of the same class show the real one: the plan would keep moving
    instances to whichever nodes it has not measured yet. Its estimate is scaled like its class's.
    """
    ratios: dict[tuple[str, str], list[float]] = {}
    for (node, model), measured in latencies.items():
        spec = catalogue.models.get(model)
        if spec is None or node not in classes or len(measured) < MIN_LATENCY_SAMPLES:
            continue
        declared = spec.expected_exec_ms(classes[node])
        if declared > 0:
            ratios.setdefault((classes[node], model), []).append(service_ms(measured) / declared)
    return {key: float(statistics.median(r)) for key, r in ratios.items()}


def desired_sets(plan_instances: Mapping[str, Mapping[str, int]], node_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """The desired set per node from a plan (every node gets one, possibly empty)."""
    return {n: {m: int(c) for m, c in plan_instances.get(n, {}).items() if c > 0} for n in node_ids}


def make_before_break(
    desired: Mapping[str, Mapping[str, int]],
    ready: Mapping[str, Mapping[str, int]],
    mem_mb: Mapping[str, float] | None = None,
    mem_total_mb: Mapping[str, float] | None = None,
) -> dict[str, dict[str, int]]:
    """Hold back stops of a model while the instances that replace it are not ready yet, within each node's memory.

    A model that the plan moves (fewer instances on one node, more on another) keeps its ready
    instances where they are until every node the plan adds it to reports it ready; the next round then
    stops them. Clients never lose the last ready endpoint of a model to a move.

    With the catalogue's sizes (``mem_mb``) and the nodes' totals (``mem_total_mb``) a node is never sent a set
    it would refuse for the servers held on it (decisions.memory_fits, the node's own rule): the plan's set goes
    first, and held servers are added only where they fit beside it. Where they do not all fit:

    * the plan keeps a ready server of the model somewhere (or another held one is kept): the hold only adds
      capacity during the move and is dropped (``_add_capacity``);
    * the held servers are the model's last ready ones: one of them is kept (on the node where that costs the
      fewest deferred MB) and that node's *starts* of models still served elsewhere wait for the hold to clear
      (``_keep_last``): they only add capacity, and start the round after the replacement is ready.

    The starts that end an outage -- of a model the plan keeps no ready server of -- are never deferred, so no
    deferral waits on another (two full nodes swapping models would each wait for the other's hold): every hold
    kept at the price of a deferral waits only on starts that go ahead, and the cluster reaches the plan within
    two rounds of those starts becoming ready. Where even deferring every such start leaves no room, the model's
    last ready server is stopped (its replacement starts at once): memory cannot hold both. A node whose plan
    itself does not fit gets no holds (it refuses the plan for the plan's sake). Without sizes or a node's
    total every hold is kept, as before.
    """
    out = {n: dict(d) for n, d in desired.items()}
    holds = _held(desired, ready)
    if not holds:
        return out
    need = mem_mb or {}
    totals = {n: t for n, t in (mem_total_mb or {}).items() if math.isfinite(t)}  # (reports are checked finite)
    room = sorted(n for n in holds if n not in totals or memory_fits(out[n], need, totals[n]))
    floor = {n: {m: min(c, ready.get(n, {}).get(m, 0)) for m, c in desired[n].items()} for n in room}
    served = {m for n, d in desired.items() for m, c in d.items() if min(c, ready.get(n, {}).get(m, 0)) > 0}
    last = sorted({m for n in room for m in holds[n] if m not in served}, key=lambda m: (-need.get(m, 0.0), m))
    deferred: set[str] = set()
    for m in last:
        _keep_last(m, out, holds, room, floor, served, need, totals, deferred)
    for n in room:
        if n not in deferred:
            _add_capacity(out[n], holds[n], desired[n], need, totals.get(n))
    return out


def _held(
    desired: Mapping[str, Mapping[str, int]], ready: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """node -> model -> ready servers the plan stops while the model has a replacement not ready yet."""
    pending = {m for n, d in desired.items() for m, c in d.items() if c > ready.get(n, {}).get(m, 0)}
    out: dict[str, dict[str, int]] = {}
    for n, r in ready.items():
        if n not in desired:
            continue
        extra = {m: c - desired[n].get(m, 0) for m, c in r.items() if m in pending and c > desired[n].get(m, 0)}
        if extra:
            out[n] = extra
    return out


def _keep_last(
    m: str,
    out: dict[str, dict[str, int]],
    holds: Mapping[str, Mapping[str, int]],
    room: Sequence[str],
    floor: Mapping[str, Mapping[str, int]],
    served: Container[str],
    need: Mapping[str, float],
    totals: Mapping[str, float],
    deferred: set[str],
) -> None:
    """Keep one held server of ``m`` (its last ready ones are all leaving) where it costs the fewest deferred MB:
    a node deferring only its starts of models ``served`` elsewhere (never below its ready servers: ``floor``)."""
    best: tuple[float, float, str, dict[str, int]] | None = None
    for n in room:
        if holds[n].get(m, 0) <= 0:
            continue
        trial = {**out[n], m: out[n].get(m, 0) + 1}
        total = totals.get(n)
        if total is not None:
            spare = {x: c - floor[n].get(x, 0) for x, c in out[n].items() if x in served and x != m}
            if not _defer(trial, spare, need, total):
                continue
        cost = sum((out[n].get(x, 0) - c) * need.get(x, 0.0) for x, c in trial.items() if x != m)
        slack = math.inf if total is None else total - _need_mb(trial, need)
        if best is None or (cost, -slack, n) < best[:3]:
            best = (cost, -slack, n, trial)
    if best is None:
        return  # memory cannot hold it beside the starts that end outages: the replacement starts now
    n, trial = best[2], best[3]
    if any(trial.get(x, 0) < c for x, c in out[n].items()):
        deferred.add(n)
    out[n] = {x: c for x, c in trial.items() if c > 0}


def _defer(trial: dict[str, int], spare: Mapping[str, int], need: Mapping[str, float], total: float) -> bool:
    """Take starts out of ``trial`` (largest servers first, at most ``spare`` per model) until it fits ``total``;
    whether it does. Arithmetic per model, not per server: a count is bounded by memory only."""
    left = {x: max(0, c) for x, c in spare.items()}
    for x in sorted(left, key=lambda x: (-need.get(x, 0.0), x)):
        if memory_fits(trial, need, total):
            return True
        size, most = need.get(x, 0.0), left[x]
        if size <= 0 or most <= 0:
            continue
        k = min(most, max(1, math.ceil((_need_mb(trial, need) - total) / size)))
        trial[x] -= k
        while k < most and not memory_fits(trial, need, total):
            k, trial[x] = k + 1, trial[x] - 1  # float rounding in the estimate: one more, at most a few times
        left[x] -= k
    if not memory_fits(trial, need, total) and sum(trial.values()) - sum(left.values()) <= 1:
        for x, k in left.items():  # one server in all fits whatever its size: the rest of the starts wait
            trial[x] -= k
    return memory_fits(trial, need, total)


def _add_capacity(
    out: dict[str, int],
    held: Mapping[str, int],
    wanted: Mapping[str, int],
    need: Mapping[str, float],
    total: float | None,
) -> None:
    """Add the held servers that fit beside ``out`` (smallest first, one per model, then the rest): capacity
    during a move, never a reason to refuse or defer the plan."""
    left = {m: c - max(0, out.get(m, 0) - wanted.get(m, 0)) for m, c in held.items()}
    if total is None:
        for m, c in left.items():
            out[m] = out.get(m, 0) + c
        return
    order = sorted(left, key=lambda m: (need.get(m, 0.0), m))
    for m in order:
        if left[m] > 0 and memory_fits({**out, m: out.get(m, 0) + 1}, need, total):
            out[m], left[m] = out.get(m, 0) + 1, left[m] - 1
    for m in order:
        if left[m] <= 0:
            continue
        size = need.get(m, 0.0)
        if size <= 0:  # frees or takes nothing: all of them, unless the count rule alone let ``out`` fit
            k = left[m] if memory_fits({**out, m: out.get(m, 0) + left[m]}, need, total) else 0
        else:
            k = min(left[m], max(0, math.floor((total - _need_mb(out, need)) / size)))
        while k > 0 and not memory_fits({**out, m: out.get(m, 0) + k}, need, total):
            k -= 1  # float rounding in the estimate: once or twice
        if k > 0:
            out[m] = out.get(m, 0) + k


def _need_mb(instances: Mapping[str, int], need: Mapping[str, float]) -> float:
    return sum(c * need.get(m, 0.0) for m, c in instances.items() if c > 0)
