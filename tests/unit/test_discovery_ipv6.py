"""An mDNS advert whose first address is IPv6 (review13a F5), and what any exception in a membership exchange does.

Before: discovery built ``https://fe80::1:PORT`` (no brackets) from a stranger's AAAA record; the peer client's
``urlsplit(...).port`` raised ValueError outside its own error, which ``SwimDriver._admit`` did not catch: every
admission task died with "Task exception was never retrieved" (a traceback each: 144 in 10 s, ~115 MB of log an
hour) and ``admit_failed`` was never called, so the made-up candidate kept 0 failures and never left the table.
Now a hint takes the advert's first IPv4 address (the peer plane is IPv4 only; none: ignored, counted, said once),
a URL the client cannot read is its own PeerHttpError, and any exception in an admission or a state fetch is a
failed attempt, logged once per kind.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from agent.discovery import swim as sw
from agent.discovery.service import Discovery
from agent.discovery.txt import SERVICE_TYPE, cluster_id, peer_address
from agent.identity import Identity
from agent.peer_client import PeerClient
from agent.peer_http import PeerConnections, PeerHttpError, listener_address
from peerserve import names, wire
from peerserve.wire import PeerState
from tests.service.conftest import free_port

TOKEN = f"unit-ipv6-token-{os.getpid()}"  # its own cluster: other tests' agents on lo ignore these adverts
STRANGER_V6 = "fe80::1"


def state(node_id: str) -> PeerState:
    return PeerState(node_id, "http://127.0.0.1:7000", 7001, {}, 1000.0, 2000.0, None, 0.0, "default", 1.0, 0, None)


def discovery(http: httpx.AsyncClient | None = None) -> Discovery:
    ident = Identity("victim", TOKEN, None)
    return Discovery("victim", 7000, "127.0.0.1", "127.0.0.1", lambda: state("victim"),
                     PeerClient(ident, lambda url: None, http=http), httpx.AsyncClient(), sw.SwimConfig(), lambda: [],
                     7001, cluster_id(TOKEN), use_mdns=False)  # fmt: skip


def props(node_id: str, peer_port: int, term: int = 0) -> dict[bytes, bytes]:
    p = {"id": node_id, "port": str(peer_port - 1), "pv": "1", "c": cluster_id(TOKEN), "pp": str(peer_port),
         "t": str(term)}  # fmt: skip
    return {k.encode(): v.encode() for k, v in p.items()}


def run_collecting(main: Callable[[], Coroutine[Any, Any, None]]) -> list[str]:
    """Run ``main`` and return what asyncio's exception handler saw ("Task exception was never retrieved" ...)."""
    seen: list[str] = []

    async def wrapped() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: seen.append(str(ctx.get("message"))))
        await main()
        gc.collect()  # a dead task is reported when collected: now, not at some later collection
        await asyncio.sleep(0)

    asyncio.run(wrapped())
    return seen


# -- which address an advert is reached at, and the URL built from it ---------------------------------------------
@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["10.0.0.5"], "10.0.0.5"),
        ([STRANGER_V6, "10.0.0.5"], "10.0.0.5"),  # an IPv6 first address is passed over, not taken as it comes
        (["::1", "fe80::1%eth0", "127.0.0.1", "10.0.0.5"], "127.0.0.1"),  # the first IPv4 one
        ([STRANGER_V6], None),  # IPv6 only: no hint
        (["::ffff:10.0.0.5"], None),  # an IPv4-mapped IPv6 address is IPv6 text: not a peer URL host
        ([], None),
        (["0.0.0.0", "255.255.255.255", "224.0.0.251", "10.0.0.7"], "10.0.0.7"),  # not unicast: passed over
        (["010.0.0.5", "10.0.0", "", "x" * 300, "10.0.0.5 "], None),  # junk text never becomes a host
    ],
)
def test_a_hint_takes_the_adverts_first_unicast_ipv4_address(addresses: list[str], expected: str | None) -> None:
    address = peer_address(addresses)
    assert address == expected
    if address is not None:  # the URL a hint carries is one the wire accepts in gossip (https://IPv4:PORT)
        url = f"https://{address}:7001"
        assert names.PEER_URL.fullmatch(url) and listener_address(url) == ("https", address, 7001)
        assert wire.MemberUpdate.parse(["n", "alive", 0, url, 1, ""]).peer_url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://fe80::1:7001",  # the review's URL: no brackets (urlsplit: "Port could not be cast")
        "https://[fe80::1:7001",  # an unclosed bracket (urlsplit: "Invalid IPv6 URL")
        "https://10.0.0.5:99999",  # out of range (urlsplit: "Port out of range")
        "https://10.0.0.5",  # no port
        "ftp://10.0.0.5:7001",
        "https://:7001",
    ],
)
def test_a_url_the_client_cannot_read_is_its_own_error_before_any_connect(url: str) -> None:
    with pytest.raises(PeerHttpError, match="not a peer listener URL"):
        listener_address(url)

    async def exchange() -> None:
        conns = PeerConnections(None, 1024)
        with pytest.raises(PeerHttpError, match="not a peer listener URL"):
            await conns.request(url, "GET", "/", {}, b"", 1.0, 1.0)
        assert conns.opened == 0 and conns.busy_count == 0 and not conns._waiting

    asyncio.run(exchange())


def test_a_bracketed_ipv6_url_is_read_whole() -> None:
    assert listener_address("https://[fe80::1]:7001") == ("https", "fe80::1", 7001)


# -- the advert path -----------------------------------------------------------------------------------------------
def test_an_ipv6_only_advert_is_ignored_counted_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    d = discovery()
    with caplog.at_level(logging.INFO, logger="agent.discovery.service"):
        for i in range(500):
            d._advert(f"s{i}.{SERVICE_TYPE}", props(f"s{i}", 18431), [STRANGER_V6, f"fd00::{i:x}"])
    assert d.mdns["no_ipv4"] == 500 and d.mdns["hinted"] == 0 and not d.swim.core.candidates
    assert len(caplog.records) == 1 and "no IPv4 address" in caplog.records[0].getMessage()
    d._advert(f"m.{SERVICE_TYPE}", props("m", 18431), [STRANGER_V6, "127.0.0.1"])  # IPv4 too: hinted at it
    assert [c.peer_url for c in d.swim.core.candidates.values()] == ["https://127.0.0.1:18431"]
    d._advert(f"victim.{SERVICE_TYPE}", props("victim", 7001), [STRANGER_V6])  # our id, IPv6 only: not ours
    assert d.mdns["own_id"] == 1


# -- any exception in an admission or a fetch is a failed attempt, never a dead task -----------------------------
def test_a_candidate_at_an_unreadable_url_fails_admission_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    """The URL from the review, hinted to the core directly (any path a hint may come by): each admission is the
    peer client's own error, counted on the candidate; one log line per candidate, no traceback."""
    d = discovery()
    urls = [f"https://{STRANGER_V6}:{18431 + i}" for i in range(8)]
    failures: list[int] = []

    async def main() -> None:
        now = time.monotonic()
        for i, url in enumerate(urls):
            d.swim.core.hint(f"s{i}", url, STRANGER_V6, now)
        d.swim._start(sw.Admit("s0", urls[0], STRANGER_V6))  # the first attempt, then the loop's own
        loop = asyncio.create_task(d.swim.run())
        await asyncio.sleep(3.0)  # an admission every 0.5 s: each candidate is tried about once
        loop.cancel()
        await d.swim.stop()
        failures.extend(c.failures for c in d.swim.core.candidates.values())

    with caplog.at_level(logging.INFO):
        unretrieved = run_collecting(main)
    assert unretrieved == []
    assert sum(failures) >= 4 and max(failures) >= 1  # counted: the table replaces or expires them now
    assert not d.swim.errors  # the peer client's own error, not an unexpected one
    lines = [r for r in caplog.records if r.name.startswith("agent.discovery")]
    assert all(r.exc_info is None for r in lines) and len(lines) <= len(urls)
    assert all("did not authenticate" in r.getMessage() for r in lines)


async def _raises(scope: Any, receive: Any, send: Any) -> None:
    """A peer app failing in a way no caller expects (httpx's in-process transport raises it in the client)."""
    raise RuntimeError("a bug below the membership layer")


def test_any_exception_in_an_admission_or_a_fetch_counts_as_failed_and_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d = discovery(http=httpx.AsyncClient(transport=httpx.ASGITransport(app=_raises)))
    url = "https://127.0.0.1:18431"
    out: dict[str, Any] = {}

    async def main() -> None:
        now = time.monotonic()
        for i in range(20):
            d.swim.core.hint(f"s{i}", url, "127.0.0.1", now)
            d.swim._start(sw.Admit(f"s{i}", url, "127.0.0.1"))
        d.swim.core.admitted("m", url, "127.0.0.1", state("m"), now)
        fetched_at = d.swim.core.records["m"].fetched_at
        d.swim._start(sw.FetchState("m", url))
        await asyncio.wait(set(d.swim._tasks), timeout=30)  # in-process: at once, unless the machine stalls
        out["failures"] = [c.failures for c in d.swim.core.candidates.values()]
        out["fetch_counted"] = d.swim.core.records["m"].fetched_at > fetched_at
        await d.swim.stop()

    with caplog.at_level(logging.INFO):
        unretrieved = run_collecting(main)
    assert unretrieved == []
    assert out["failures"] == [1] * 20 and out["fetch_counted"]
    assert d.swim.errors == {"RuntimeError": 21}
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1 and "failed unexpectedly" in tracebacks[0].getMessage()


# -- a real advert over mDNS on 127.0.0.1 ----------------------------------------------------------------------
def test_a_real_advert_with_an_ipv6_first_address_is_counted_not_a_log_flood(caplog: pytest.LogCaptureFixture) -> None:
    """Real zeroconf on 127.0.0.1 both sides: a stranger advertises names of our cluster with an AAAA record
    (fe80::1) and no A record, and one with both (its IPv4 address refuses connections), re-announced. Nothing is
    sent to fe80::1; the one with IPv4 is tried at 127.0.0.1 and its failures counted."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    d = discovery()
    refused = free_port()  # nothing listens there
    out: dict[str, Any] = {}

    def info(name: str, addresses: list[bytes], term: int = 0) -> AsyncServiceInfo:
        return AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=refused - 1, addresses=addresses,
                                properties=props(name, refused, term), server=f"{name}.local.")  # fmt: skip

    v6 = socket.inet_pton(socket.AF_INET6, STRANGER_V6)
    records = [(f"v6only{i}", [v6]) for i in range(8)] + [("both", [v6, socket.inet_aton("127.0.0.1")])]
    infos = [info(name, addresses) for name, addresses in records]

    async def main() -> None:
        stranger = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        d._zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        browser = AsyncServiceBrowser(d._zc.zeroconf, SERVICE_TYPE, handlers=[d._on_service])
        loop = asyncio.create_task(d.swim.run())
        try:
            # registered once probed; the announcements go on in zeroconf's own tasks (their end is not awaited)
            await asyncio.gather(*(stranger.async_register_service(i) for i in infos))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (
                d.mdns["no_ipv4"] >= 8 and any(c.failures for c in d.swim.core.candidates.values())
            ):
                await asyncio.sleep(0.2)
            first = d.mdns["no_ipv4"]
            for name, addresses in records:  # re-announced with a new TXT (a term): each name is resolved again
                await stranger.async_update_service(info(name, addresses, term=1))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and d.mdns["no_ipv4"] < first + 8:
                await asyncio.sleep(0.2)
            out["candidates"] = {(c.node_id, c.peer_url): c.failures for c in d.swim.core.candidates.values()}
        finally:
            loop.cancel()
            await d.swim.stop()
            await browser.async_cancel()
            await stranger.async_close()
            await d._zc.async_close()

    with caplog.at_level(logging.INFO):
        unretrieved = run_collecting(main)
    assert unretrieved == []
    mine = {k: v for k, v in out["candidates"].items() if k[0] in ("both",) or k[0].startswith("v6only")}
    assert list(mine) == [("both", f"https://127.0.0.1:{refused}")] and mine[("both", f"https://127.0.0.1:{refused}")]
    assert d.mdns["no_ipv4"] >= 16 and not d.swim.errors  # each name seen, and seen again when re-announced
    lines = [r for r in caplog.records if r.name.startswith("agent.discovery")]
    assert all(r.exc_info is None for r in lines)
    assert sum("no IPv4 address" in r.getMessage() for r in lines) == 1
    assert sum("candidate both" in r.getMessage() for r in lines) == 1


def test_seeds_an_ipv6_one_and_a_malformed_one_are_said_once_and_never_end_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seeds answered in-process (no packet leaves): an IPv6 seed would hint ``https://::1:PORT``, never gossiped
    nor reachable (the peer plane is IPv4 only), and a URL httpx cannot read raised InvalidURL (not an HTTPError)
    out of the seed loop, ending it (and ``stop`` re-raised it)."""
    peer_port = free_port()

    async def cluster(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps({"node_id": "s1", "peer_port": peer_port}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    ident = Identity("victim", TOKEN, None)
    d = Discovery("victim", 7000, "127.0.0.1", "127.0.0.1", lambda: state("victim"), PeerClient(ident, lambda u: None),
                  httpx.AsyncClient(transport=httpx.ASGITransport(app=cluster)), sw.SwimConfig(), lambda: [], 7001,
                  cluster_id(TOKEN), seeds=["http://[::1]:8400", "http://[::1", "http://127.0.0.1:8400"],
                  use_mdns=False)  # fmt: skip
    out: dict[str, Any] = {}

    async def main() -> None:
        await d.start()
        await asyncio.sleep(0.5)
        out["candidates"] = sorted(d.swim.core.candidates)
        out["alive"] = [t.get_name() for t in d._tasks if not t.done()]
        await d.stop()

    with caplog.at_level(logging.INFO):
        unretrieved = run_collecting(main)
    assert unretrieved == []
    assert out["candidates"] == [("s1", f"https://127.0.0.1:{peer_port}")]
    assert out["alive"] == ["membership", "seeds"]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("agent.discovery")]
    assert sum("IPv6, ignored" in m for m in messages) == 1
    assert sum("seed http://[::1 not reachable yet" in m for m in messages) == 1
    assert not any("ended" in m for m in messages)
