"""What the leader does each round, as pure functions: gather -> snapshot -> desired sets.

This module parses what the agents report and builds the snapshot with its measured figures; which of the window's
rows are one client and one site is agent/placement_sites.py, and make-before-break of the plan's desired sets is
agent/handover.py.

``build_snapshot`` turns what the agents report (node stats, model stats, a window of request records)
into a solver.Snapshot: one request per (client, model) active in the window, its RTT to each node from the
client's latest report in its logger's records (UNKNOWN_RTT_MS where it measured none), execution time per node
from the median of proxied latencies there, else the catalogue's profile for the node's class.

Every record is some member's word (``logged_by``: the leader's window marks each with the node whose log held
it), and a member's log may name any client and any node. So a logger's rows shape only its own streams: a
stream is keyed by its logger, "newest" orders rows by min(stamp, now) (a row stamped ahead, as the window keeps
for clock skew, is not newer than now), and a member writing rows under another member's clients' names makes
streams of its own, never rewrites theirs (review13a F4). A client whose requests pass through several agents is
in each one's log: its loggers' rows that agree within ``SAME_CLIENT_RTT_MS`` on every node are one client
(``client_groups``: one request under the thesis objective, one RTT row for the sites), a row that agrees with none
stays its logger's own. A node's measured figure is computed per logger
(``latency_figures``): its own log where that holds ``MIN_LATENCY_SAMPLES``, else the lowest of the other loggers'
(and only of a model it reports running: nothing else could have been measured), so one member's records can make
another node look faster, capped by the catalogue's throughput, never slower (review13a F3). The round reads at
most ``MAX_STREAMS`` streams (``MAX_THESIS_STREAMS`` for the thesis objective), each logger an equal share where
they exceed it (``fair_streams``), and each logger's sites fit its share of ``MAX_SITES``: one member's made-up
clients cost bounded CPU and coarsen only its own sites.

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
without measurements of a model is priced at the catalogue's figure scaled by what its class's fastest measured
node shows (``class_scale``), so unmeasured nodes do not look better than measured ones of the same kind.

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
import operator
import statistics
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.catalogue import Catalogue
from agent.placement_sites import (
    MAX_STREAMS,
    MEDIAN_LOGGERS,
    Row,
    StreamKey,
    carried_demand,
    client_groups,
    fair_streams,
    rtt_row,
    site_requests,
    stream_counts,
)
from peerserve import wire

MIN_LATENCY_SAMPLES = 5  # fewer measured proxy latencies than this: trust the catalogue's profile
SERVICE_QUANTILE = 0.2  # the service-time estimate: at utilisation <= 0.8 at least this share waits for nothing
MAX_SLOWDOWN = 8.0  # the most contention divided out of a node's measured service times
# (client, model) streams under the thesis objective (one instance each, the thesis's largest table is 1,000
# requests): past it the busiest streams in the window are kept (2,000 made-up client ids: an 8 s solve)
MAX_THESIS_STREAMS = 1000
# another logger's figure of a node counts only where it holds at least this share of the samples the busiest other
# logger holds of that (node, model): "the lowest of the others" let one member's 5 records of "a took 0.5 ms"
# against 24,000 honest ones price a slow board's class at 300 req/s, 4x under-provisioned (review13c F3). Of the
# busiest, not of all: with five honest proxies at a fifth each, a share of the sum left the node no figure at all
LOGGER_SHARE = 0.25
# what the snapshot reads of a node's per-model usage (its /stats/models entry): a report keeps these only, so a
# member's answer of 200 models x 16 made-up keys (~560 KB of objects, kept a round and then as the stale stand-in,
# and sent to the solver worker every round) costs the leader ~40 KB
USAGE_KEYS = ("requests_since_provisioned", "last_request", "provisioned_at")


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
    # model -> (requests, mean ms in the server) its own servers measured over the window: its word about itself
    service: Mapping[str, tuple[int, float]] = field(default_factory=dict)

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
        service=_service(stats_node.get("service")),
    )


MAX_SERVICE_MODELS = 256  # a report's service figures read (wire.MAX_MODELS: the peer plane refuses more)


def _service(raw: Any) -> dict[str, tuple[int, float]]:
    """A report's own service figures: at most MAX_SERVICE_MODELS, each (requests, ms) a plausible measurement;
    an entry that is not is left out (it must not cost the rest of the report)."""
    out: dict[str, tuple[int, float]] = {}
    if not isinstance(raw, Mapping):
        return out
    for model, entry in list(raw.items())[:MAX_SERVICE_MODELS]:
        if not isinstance(entry, Mapping):
            continue
        try:
            n, ms = _ms(entry.get("requests"), MAX_SERVICE_REQUESTS), _ms(entry.get("service_ms"), MAX_LATENCY_MS)
        except (TypeError, ValueError):
            continue
        if n is not None and ms is not None:
            out[str(model)] = (int(n), ms)
    return out


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
MAX_SERVICE_REQUESTS = 1e12  # a node's requests served in a window above this is not a count


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
    if queue_aware and (window_s is None or window_s <= 0):
        raise ValueError("the queue objective needs a positive window_s")
    slowdown = {n.node_id: n.contention() if queue_aware else 1.0 for n in nodes}
    if queue_aware and window_s is not None:
        own = explained_contention(records, window_s, {n.node_id: n.cores for n in nodes}, known)
        slowdown = {n: min(v, own.get(n, 1.0)) for n, v in slowdown.items()}  # a node's word, checked
    kept = records_kept(records, known)
    counts = stream_counts(kept)
    chosen = fair_streams(counts, MAX_STREAMS if queue_aware else MAX_THESIS_STREAMS)
    whole: dict[StreamKey, Row] = {}  # streams whose newest row named every node: that row, in node order
    partial: dict[StreamKey, dict[str, float]] = {}  # the others: each node's RTT from its newest row naming it
    every = operator.itemgetter(*ids) if len(ids) > 1 else None
    # newest first, by min(stamp, now): a row stamped ahead (the window keeps up to max_ahead_s) is no newer than now;
    # of equals, the later in the window (a logger's rows are in its log's order)
    for r in reversed(sorted(kept, key=lambda r: min(r.ts, now_s))):
        key = (r.logged_by, r.client, r.model)
        if key in whole or key not in chosen:  # read already (usually: after its newest), or left out
            continue
        rtts = partial.get(key)
        if rtts is None:
            if every is not None and len(r.rtt_ms) == len(ids) and r.rtt_ms.keys() <= node_set:  # the usual newest
                whole[key] = every(r.rtt_ms)
                continue
            rtts = partial[key] = {}
        elif len(rtts) >= len(node_set):  # every node reported
            continue
        for node_id, rtt in r.rtt_ms.items():
            if node_id in node_set and node_id not in rtts:
                rtts[node_id] = rtt
    serving = {n.node_id: {m for m, c in (*n.instances.items(), *n.ready.items()) if c > 0} for n in nodes}
    reported = {(n.node_id, m): v for n in nodes for m, v in n.service.items()}
    figures = latency_figures(kept, slowdown, service_ms if queue_aware else _median, serving, reported)
    classes = {n.node_id: n.node_class for n in nodes}

    scale = class_scale(figures, classes, catalogue) if queue_aware else {}

    known_exec: dict[tuple[str, str], float] = {}  # one figure per (node, model), not one per stream

    def exec_ms(node: str, model: str) -> float:
        if (node, model) in known_exec:
            return known_exec[(node, model)]
        value = figures.get((node, model))
        if value is None:
            # never below the catalogue's through its class: one node's word about itself (review14b F4: a member
            # reporting 0.001 ms priced its unmeasured class-mates at 0.001 ms) moves only its own figure
            value = catalogue.models[model].expected_exec_ms(classes[node]) * max(
                1.0, scale.get((classes[node], model), 1.0)
            )
        known_exec[(node, model)] = value
        return value

    exec_rows = {m: {n: exec_ms(n, m) for n in ids} for m in {key[2] for key in chosen}}
    unmarked = any(key[0] is None for key in chosen)  # None sorts first of its (client, model); else as stored
    ordered = sorted(chosen, key=_stream_order if unmarked else operator.itemgetter(1, 2, 0))
    rows = {key: whole[key] if key in whole else rtt_row(partial.get(key, {}), ids) for key in ordered}
    grouped: list[dict[str, Any]] = []  # one request per group of agreeing loggers' rows (client_groups)
    group_of: dict[StreamKey, int] = {}  # each stream's group
    for row, members in client_groups(rows, counts):
        _, client, model = members[0]
        group_of.update(dict.fromkeys(members, len(grouped)))
        grouped.append({"model": model, "client": client, "rtt_ms": dict(zip(ids, row, strict=True)),
                        "exec_ms": dict(exec_rows[model])})  # fmt: skip
    models = [{"name": m.name, "mem_mb": m.mem_mb, "compute": m.compute} for m in catalogue.models.values()]
    extra: dict[str, Any] = {}
    if queue_aware and window_s is not None:
        carried = carried_demand(counts, chosen)
        held: dict[str | None, tuple[list[int], list[float]]] = {}  # per logger: its streams' groups, their records
        for key in ordered:  # each logger's streams in (client, model) order; a group's request is each member's
            if key[0] not in held:
                held[key[0]] = ([], [])
            mine, weights = held[key[0]]
            mine.append(group_of[key])
            weights.append(carried[key])
        requests = site_requests(grouped, held, window_s)
        for model_entry, spec in zip(models, catalogue.models.values(), strict=True):
            model_entry["throughput_rps"] = {
                n: _throughput(spec, classes[n], figures.get((n, spec.name)), scale.get((classes[n], spec.name), 1.0))
                for n in ids
            }
        extra = {"objective": objective}
    else:  # the thesis counts a client's (client, model) once, however many agents logged it (client_groups)
        requests = [grouped[g] for g in dict.fromkeys(map(group_of.__getitem__, ordered))]  # (client, model) order
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


def _stream_order(key: StreamKey) -> tuple[str, str, int, str]:
    """Streams in (client, model) order, then by logger (None, records of unknown origin, first)."""
    logger, client, model = key
    return client, model, logger is not None, logger or ""


def _median(measured: Sequence[float]) -> float:
    return float(statistics.median(measured))


def latency_figures(
    records: Iterable[RequestRecord],
    slowdown: Mapping[str, float],
    figure: Callable[[Sequence[float]], float],
    serving: Mapping[str, Container[str]],
    reported: Mapping[tuple[str, str], tuple[int, float]] | None = None,
) -> dict[tuple[str, str], float]:
    """(node, model) -> its measured figure, the node's contention divided out, counted only for a model the node
    reports running or ready (``serving``): the slower of its own word and the other loggers' (either alone where
    the other has none; no entry where neither has one).

    Its own word: its servers' service time as it reports it (``reported``: requests and mean ms over the window,
    agent/serving/server_stats.py) where they served ``MIN_LATENCY_SAMPLES``, else ``figure`` (a quantile) of the
    latencies its own log holds of itself where it holds as many. The other loggers' (each holding
    ``MIN_LATENCY_SAMPLES``): where ``MEDIAN_LOGGERS`` or more measured it, the lower median of their figures (one
    vote each); else the lowest of the one or two that hold ``LOGGER_SHARE`` of the busiest one's samples, the
    node's own log counted as one of them. Records of unknown origin (``logged_by`` None: a caller that does not
    say, as the benchmarks; the leader's window marks every record) are one logger, taken as they come.

    A node is trusted about itself only as far as it hurts only itself: claiming to be faster than the others
    measured it does not make it faster (the slower of the two), so a node cannot attract load by lying; claiming
    to be slower only takes load off it. Its own word is what prices a node nobody proxies to (clients sent to its
    servers directly), which before had the catalogue's figure. A member's log may name any node as a request's
    server, so pooling every log let one member's five records of "b took 120 s" price honest b out (review13a
    F3); the lowest of any logger let five records of "0.5 ms" against 24,000 price a slow board's class at 300
    req/s (review13c F3); a share of the busiest alone let a member logging 4x the busiest proxy's records leave
    its own slow figure the only one (review13d F2). With three or more other loggers one member moves their figure
    only as far as the honest loggers' own spread; with one or two, volume decides (a member holding a quarter of
    the busiest logger's records, the node's own log included, can make it look faster, where the node has no word
    of its own; one holding four times as many, slower). A throughput never passes the catalogue's
    (``_throughput``). Of a model the node does not run there is nothing to measure, so a figure there is not
    taken. What remains: a node whose instance of a model served fewer than ``MIN_LATENCY_SAMPLES`` requests in
    the window (idle), so that it has no word of its own, can be priced out of it by one member's records."""
    measured: dict[tuple[str, str, str | None], list[float]] = {}
    for r in records:
        if r.node is None or r.latency_ms is None or not 200 <= r.status < 300:
            continue
        if r.logged_by in (r.node, None) or r.model in serving.get(r.node, ()):
            measured.setdefault((r.node, r.model, r.logged_by), []).append(r.latency_ms / slowdown.get(r.node, 1.0))
    own: dict[tuple[str, str], float] = {}
    own_samples: dict[tuple[str, str], int] = {}  # the node's own log's samples: a logger in the share rule
    others: dict[tuple[str, str], list[tuple[int, float]]] = {}  # (samples, figure) per other logger with enough
    for (node, model, logger), latencies in measured.items():
        if len(latencies) < MIN_LATENCY_SAMPLES:
            continue
        if logger == node:
            own[(node, model)], own_samples[(node, model)] = figure(latencies), len(latencies)
        else:
            others.setdefault((node, model), []).append((len(latencies), figure(latencies)))
    for (node, model), (served, ms) in (reported or {}).items():
        if served >= MIN_LATENCY_SAMPLES and model in serving.get(node, ()):
            own[(node, model)] = ms / slowdown.get(node, 1.0)  # measured at its servers: no proxy in it
    chosen: dict[tuple[str, str], float] = {}
    for key in others.keys() | own.keys():
        theirs = others_figure(others.get(key, []), own_samples.get(key, 0))
        mine = own.get(key)
        if mine is not None or theirs is not None:
            chosen[key] = max(v for v in (mine, theirs) if v is not None)
    return chosen


def others_figure(held: Sequence[tuple[int, float]], own_samples: int = 0) -> float | None:
    """The other loggers' figure of a (node, model) from their (samples, figure) pairs: with ``MEDIAN_LOGGERS`` or
    more, the lower median (one vote per logger, however many records it holds); else the lowest of those holding
    ``LOGGER_SHARE`` of the busiest logger's samples, the node's own log (``own_samples``) among them; None where
    none does."""
    if len(held) >= MEDIAN_LOGGERS:
        values = sorted(v for _, v in held)
        return values[(len(values) - 1) // 2]
    busiest = max([own_samples, *(n for n, _ in held)])
    counted = [v for n, v in held if n >= LOGGER_SHARE * busiest]
    return min(counted) if counted else None


def unpromised_mb(node: NodeReport, catalogue: Catalogue) -> float:
    """The memory a plan may still give out on ``node``: free now, and never more than its total less its running
    servers at their catalogue size. A node refuses a desired set whose servers' mem_mb passes its total
    (agent.decisions.memory_refusal); servers measuring less than their mem_mb leave more free than that."""
    promised = sum(c * catalogue.models[m].mem_mb for m, c in node.instances.items() if m in catalogue.models and c > 0)
    return max(0.0, min(node.mem_available_mb, node.mem_total_mb, node.mem_total_mb - promised))


def records_kept(records: Iterable[RequestRecord], known: set[str]) -> list[RequestRecord]:
    """The records that count as demand: known models, not failed by the cluster (503 counts)."""
    return [r for r in records if r.model in known and not (r.status >= 500 and r.status != 503)]


def service_ms(measured: Sequence[float]) -> float:
    """An instance's service time from proxied latencies: their SERVICE_QUANTILE (queueing waits excluded)."""
    ordered = sorted(measured)
    return float(ordered[int(SERVICE_QUANTILE * (len(ordered) - 1))])


def _throughput(spec: Any, node_class: str, measured_ms: float | None, scale: float = 1.0) -> float:
    """An instance's throughput on a node: the catalogue's for its class, or less where measured (``measured_ms``,
    its service time) or where its class measures slower than declared (``scale``); never more than declared."""
    declared = float(spec.expected_throughput_rps(node_class))
    if measured_ms is not None:
        return min(declared, 1000.0 / max(measured_ms, 0.1))
    if scale > 1.0:  # the class runs slower than declared where measured: so will this node
        return min(declared, 1000.0 / max(float(spec.expected_exec_ms(node_class)) * scale, 0.1))
    return declared


def class_scale(
    figures: Mapping[tuple[str, str], float], classes: Mapping[str, str], catalogue: Catalogue
) -> dict[tuple[str, str], float]:
    """(node class, model) -> the lowest over the class's measured nodes of service time / the catalogue's.

    A node that runs no instance of a model has no measurements and would be priced at the catalogue's
    figure while its measured peers of the same class show the real one: the plan would keep moving
    instances to whichever nodes it has not measured yet. Its estimate is scaled like its class's fastest
    measured peer: never better than that, and never better than the catalogue's (the caller takes the scale
    only above 1: a class measured faster than declared leaves its unmeasured nodes at the catalogue's figure,
    since one member's report of its own servers could otherwise price every class-mate near zero: review14b F4).
    The figures are ``latency_figures``' (per logger, the node's own
    or the lowest), and the lowest of them, not the median: a member's figures of itself (its own word) could
    move a median up and price every unmeasured node of its class out (review13a F3); it can only lower a
    minimum.
    """
    ratios: dict[tuple[str, str], float] = {}
    for (node, model), measured in figures.items():
        spec = catalogue.models.get(model)
        if spec is None or node not in classes:
            continue
        declared = spec.expected_exec_ms(classes[node])
        if declared > 0:
            key = (classes[node], model)
            ratios[key] = min(ratios.get(key, math.inf), measured / declared)
    return ratios


def desired_sets(plan_instances: Mapping[str, Mapping[str, int]], node_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """The desired set per node from a plan (every node gets one, possibly empty)."""
    return {n: {m: int(c) for m, c in plan_instances.get(n, {}).items() if c > 0} for n in node_ids}
