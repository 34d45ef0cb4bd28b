"""Scrapes this node's own model servers' statistics (agent/serving/server_stats.py) into a ServiceWindow.

Only the servers the node's runtime lists (its own processes and containers, at the URLs the runtime gave them).
Each scrape reads at most ``MAX_PAGE_BYTES`` by ``SCRAPE_DEADLINE_S`` (each read also within its own timeout, so
a trickling page cannot hold the loop); an answer other than 200 (a TF-Serving started without a monitoring config
answers 404) is no figure, not an error; a page too large, late or that does not parse is counted in ``errors``
(and logged once per server and kind), never raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Container, Sequence

import httpx

from agent.runtime.base import Instance
from agent.serving.server_stats import (
    MAX_PAGE_BYTES,
    METRICS_PATH,
    Counters,
    ServerStatsError,
    ServiceFigure,
    ServiceWindow,
    parse_prometheus,
    parse_triton_stats,
)

log = logging.getLogger(__name__)

SCRAPE_INTERVAL_S = 5.0  # a figure over the request window (600 s by default) from ~120 scrapes
SCRAPE_DEADLINE_S = 2.0  # one page, whole


class PageTooLarge(ValueError):
    """A statistics page past MAX_PAGE_BYTES, or not whole by its deadline."""


def stats_url(instance: Instance, server: str) -> str:
    """Where ``instance`` keeps its cumulative counters: Triton's statistics extension, else the Prometheus page."""
    if server == "triton":
        return f"{instance.url}/v2/models/{instance.model}/stats"
    return f"{instance.url}{METRICS_PATH}"


async def read_page(http: httpx.AsyncClient, url: str, limit: int, deadline_s: float) -> bytes | None:
    """The body of a 200 answer at ``url``, at most ``limit`` bytes by ``deadline_s`` (PageTooLarge past either);
    None for any other status."""
    end = time.monotonic() + deadline_s
    async with http.stream("GET", url, timeout=httpx.Timeout(deadline_s)) as response:
        if response.status_code != 200:
            return None
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > limit:
                raise PageTooLarge(f"statistics page over {limit} bytes")
            if time.monotonic() > end:
                raise PageTooLarge(f"statistics page not whole within {deadline_s:g} s")
        return bytes(body)


class ServerScraper:
    """This node's servers' service times over ``window_s``: ``scrape_once`` records, ``figures`` reads."""

    def __init__(self, http: httpx.AsyncClient, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.http = http
        self.clock = clock
        self.window = ServiceWindow(window_s)
        self.errors = 0  # scrapes that failed (transport, size, deadline, parse)
        self.last_error = ""
        self._told: set[tuple[str, str]] = set()  # (server, kind of failure) already logged

    async def scrape_once(
        self, instances: Sequence[Instance], server_of: Callable[[str], str], ready: Container[str] | None = None
    ) -> None:
        """Scrape every running server in ``instances`` (of those, the ``ready`` ones where given: one still
        loading its model refuses, and is no error) once, at the same time; forget the ones not running."""
        running = [i for i in instances if i.running and i.url]
        present = {i.id for i in running}
        self.window.forget(present)
        self._told = {t for t in self._told if t[0] in present}
        scraped = [i for i in running if ready is None or i.id in ready]
        results = await asyncio.gather(*(self._scrape(i, server_of(i.model)) for i in scraped))
        now = self.clock()
        for inst, counters in zip(scraped, results, strict=True):
            if counters is not None:
                self.window.record(inst.id, inst.model, now, counters)

    async def _scrape(self, instance: Instance, server: str) -> Counters | None:
        try:
            page = await read_page(self.http, stats_url(instance, server), MAX_PAGE_BYTES, SCRAPE_DEADLINE_S)
            if page is None:
                return None
            if server == "triton":
                return parse_triton_stats(json.loads(page), instance.model)
            return parse_prometheus(page.decode("utf-8", errors="replace"), instance.model)
        except (httpx.HTTPError, ServerStatsError, PageTooLarge, ValueError, RecursionError) as exc:
            self.errors += 1
            self.last_error = f"{instance.id}: {type(exc).__name__}: {exc}"[:300]
            if (instance.id, type(exc).__name__) not in self._told:
                self._told.add((instance.id, type(exc).__name__))
                log.warning("statistics of %s could not be read: %s: %s", instance.id, type(exc).__name__, exc)
            return None

    def figures(self) -> dict[str, ServiceFigure]:
        return self.window.figures(self.clock())
