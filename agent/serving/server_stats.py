"""A node's own model servers' service times, measured at the servers: cumulative counters, scraped, differenced.

A node's execution-time figure used to come only from request logs, written by whichever agents proxied to it:
a node that clients reach directly (the endpoint answer), or that nobody proxies to, had none, and with one or two
loggers their volume decided it. Each server keeps cumulative counters of its own: TF-Serving's Prometheus page
(``:tensorflow:serving:request_latency`` histogram, its ``_sum`` and ``_count`` in microseconds, when started with a
monitoring config), the stand-in's page in the same form (agent/modelserver.py), and Triton's statistics extension
(``GET /v2/models/{m}/stats``: ``success`` and ``queue`` counts and nanoseconds; it answers on the HTTP port, where
Triton's Prometheus page needs a metrics port our servers run without). The difference between two scrapes is the
requests served between them and their time in the server (Triton's queue wait left out), whoever sent them.

Parsing is pure and strict about what it reads: a page is untrusted input (``MAX_PAGE_BYTES``, checked by the
caller), a line it needs that does not parse is ``ServerStatsError`` (the scraper counts it, never crashes), and
lines it does not need are skipped unread. ``ServiceWindow`` keeps per server a bounded ring of scrapes and gives
per model the requests and mean service time over the window.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections import deque
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any

MAX_PAGE_BYTES = 256 * 1024  # a metrics page past this is not read (TF-Serving's with a few models: ~30 KB)
MAX_SAMPLES = 256  # scrapes kept per server: a window of 600 s at one scrape per 5 s is 121
MAX_SERVERS = 256  # servers tracked at once (a node runs a few; past it new ones are not tracked)
MAX_COUNT = 10**12  # a cumulative request count above this is not a counter (a junk page)
MAX_BUSY_MS = 1e15  # nor a cumulative time above this (~31,000 years)
TF_LATENCY = ":tensorflow:serving:request_latency"  # TF-Serving's /tensorflow/serving/request_latency, in us
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?[0-9]+)?")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


# TF-Serving's request_latency buckets (monitoring::Buckets::Exponential(10, 1.8, 33)), us
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
INFERENCE_APIS = ("predict", "classify", "regress")
PROMETHEUS_TEXT = "text/plain; version=0.0.4"
METRICS_PATH = "/monitoring/prometheus/metrics"  # TF-Serving's default prometheus_config path (and the stand-in's)


class RequestLatency:
    """The stand-in's side (agent/modelserver.py): TF-Serving's ``request_latency`` histogram, per API, cumulative
    since the server started, written as TF-Serving's monitoring page writes it. Thread-safe (one thread per
    connection); its size is fixed (three APIs, 34 buckets each)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = {api: [0] * (len(LATENCY_BUCKETS_US) + 1) for api in INFERENCE_APIS}
        self._sum_us = dict.fromkeys(INFERENCE_APIS, 0.0)

    def observe(self, api: str, latency_us: float) -> None:
        """One served ``api`` call of ``latency_us`` in the server (an unknown api is not counted)."""
        i = bisect.bisect_left(LATENCY_BUCKETS_US, latency_us)  # the first bucket whose bound it does not pass
        with self._lock:
            if api in self._buckets:
                self._buckets[api][i] += 1
                self._sum_us[api] += latency_us

    def page(self, model: str) -> str:
        """The Prometheus text page (only APIs called so far, as TF-Serving's exporter writes only set cells)."""
        name = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        lines = [f"# TYPE {TF_LATENCY} histogram"]
        with self._lock:
            for api, counts in self._buckets.items():
                if not any(counts):
                    continue
                labels = f'model_name="{name}",API="{api}",entrypoint="REST"'
                total = 0
                for bound, n in zip((*LATENCY_BUCKETS_US, math.inf), counts, strict=True):
                    total += n
                    le = "+Inf" if bound == math.inf else f"{bound:.6g}"
                    lines.append(f'{TF_LATENCY}_bucket{{{labels},le="{le}"}} {total}')
                lines.append(f"{TF_LATENCY}_sum{{{labels}}} {self._sum_us[api]:.3f}")
                lines.append(f"{TF_LATENCY}_count{{{labels}}} {total}")
        return "\n".join(lines) + "\n"


class ServerStatsError(ValueError):
    """A server's statistics page does not parse where it matters (counted by the scraper; never fatal)."""


@dataclass(frozen=True)
class Counters:
    """A server's cumulative figures for one model since it started."""

    requests: int  # inference requests it served successfully
    busy_ms: float  # their time in the server in all, ms (Triton: its queue wait left out)


@dataclass(frozen=True)
class ServiceFigure:
    """One model's figures over the window, summed over this node's servers of it."""

    requests: int
    service_ms: float  # mean time in the server per request
    span_s: float  # the longest stretch of scrapes the figure covers (at most the window and a scrape)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None or m.end() == pos:
            raise ServerStatsError(f"labels do not parse: {text[:80]!r}")
        out[m.group(1)] = m.group(2)
        pos = m.end()
    return out


def _value(text: str, bound: float) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ServerStatsError(f"value {text[:40]!r} is not a number") from None
    if not (math.isfinite(x) and 0 <= x <= bound):
        raise ServerStatsError(f"value {text[:40]!r} is not a counter")
    return x


def parse_prometheus(page: str, model: str) -> Counters:
    """``model``'s counters from a TF-Serving-style Prometheus page (``request_latency`` ``_sum``/``_count`` of
    ``model_name=model``, summed over their label sets: API, entrypoint); zero where it has no such line (the
    exporter writes a cell once it is set: a server that served nothing yet; its first scrape is the base)."""
    count, total_us = 0, 0.0
    for line in page.splitlines():
        if not line.startswith(TF_LATENCY):
            continue  # comments, other metrics, histogram buckets: not read
        m = _SAMPLE.fullmatch(line.strip())
        if m is None:
            raise ServerStatsError(f"line does not parse: {line[:80]!r}")
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        if name not in (TF_LATENCY + "_sum", TF_LATENCY + "_count") or _labels(labels).get("model_name") != model:
            continue
        if name.endswith("_count"):
            count += int(_value(value, MAX_COUNT))
        else:
            total_us += _value(value, MAX_BUSY_MS * 1000)
    return Counters(min(count, MAX_COUNT), min(total_us / 1000.0, MAX_BUSY_MS))


def _ns(stats: Any, key: str) -> tuple[int, int]:
    """(count, ns) of one duration in Triton's ``inference_stats`` (absent: zero)."""
    entry = stats.get(key, {}) if isinstance(stats, Mapping) else None
    if not isinstance(entry, Mapping):
        raise ServerStatsError(f"inference_stats.{key} is not an object")
    count, ns = entry.get("count", 0), entry.get("ns", 0)
    for x in (count, ns):
        if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_BUSY_MS * 1e6:
            raise ServerStatsError(f"inference_stats.{key} holds {str(x)[:40]!r}, not a counter")
    return count, ns


def parse_triton_stats(doc: Any, model: str) -> Counters | None:
    """``model``'s counters from Triton's ``/v2/models/{model}/stats`` answer (every version summed): successful
    requests, and their time in the server less their queue wait; None where it lists no such model."""
    entries = doc.get("model_stats") if isinstance(doc, Mapping) else None
    if not isinstance(entries, list):
        raise ServerStatsError("no model_stats list")
    requests, busy_ns, found = 0, 0, False
    for e in entries:
        if not isinstance(e, Mapping) or e.get("name") != model:
            continue
        stats = e.get("inference_stats")
        success, queue = _ns(stats, "success"), _ns(stats, "queue")
        found = True
        requests += success[0]
        busy_ns += max(0, success[1] - queue[1])
    if not found:
        return None
    return Counters(min(requests, MAX_COUNT), min(busy_ns / 1e6, MAX_BUSY_MS))


class ServiceWindow:
    """Per server, its scrapes within ``window_s`` (and the one just before, the window's base), at most
    ``MAX_SAMPLES`` each and ``MAX_SERVERS`` servers; per model, the difference summed over its servers."""

    def __init__(self, window_s: float, max_samples: int = MAX_SAMPLES, max_servers: int = MAX_SERVERS) -> None:
        if window_s <= 0 or max_samples < 2 or max_servers < 1:
            raise ValueError("a window needs a positive length, two samples and one server")
        self.window_s = window_s
        self.max_servers = max_servers
        self._max_samples = max_samples
        self._samples: dict[str, tuple[str, deque[tuple[float, Counters]]]] = {}  # server -> (model, scrapes)

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, server: str, model: str, now: float, counters: Counters) -> None:
        """One scrape of ``server`` (serving ``model``); a counter that went back (a restarted server) starts its
        history again; a server past ``max_servers`` is not tracked."""
        held = self._samples.get(server)
        if held is None or held[0] != model:
            if held is None and len(self._samples) >= self.max_servers:
                return
            held = self._samples[server] = (model, deque(maxlen=self._max_samples))
        ring = held[1]
        if ring and (counters.requests < ring[-1][1].requests or counters.busy_ms < ring[-1][1].busy_ms):
            ring.clear()
        ring.append((now, counters))
        while len(ring) > 1 and ring[1][0] <= now - self.window_s:
            ring.popleft()  # the newest scrape at or before the window's start stays as its base

    def forget(self, present: Container[str]) -> None:
        """Drop the servers that are gone (the runtime no longer lists them)."""
        self._samples = {k: v for k, v in self._samples.items() if k in present}

    def figures(self, now: float) -> dict[str, ServiceFigure]:
        """Per model, the requests its servers served over the window and their mean time in the server."""
        sums: dict[str, tuple[int, float, float]] = {}
        for model, ring in self._samples.values():
            usable = [(t, c) for t, c in ring if t <= now]
            base = next((s for s in reversed(usable) if s[0] <= now - self.window_s), usable[0] if usable else None)
            if base is None or base is usable[-1]:
                continue
            last = usable[-1]
            n, busy, span = sums.get(model, (0, 0.0, 0.0))
            sums[model] = (
                n + last[1].requests - base[1].requests,
                busy + last[1].busy_ms - base[1].busy_ms,
                max(span, last[0] - base[0]),
            )
        return {m: ServiceFigure(n, busy / n, span) for m, (n, busy, span) in sums.items() if n > 0}


def report(figures: Mapping[str, ServiceFigure]) -> dict[str, dict[str, float]]:
    """The figures as ``/stats/node``'s ``service`` field."""
    return {
        m: {"requests": f.requests, "service_ms": round(f.service_ms, 3), "span_s": round(f.span_s, 1)}
        for m, f in sorted(figures.items())
    }
