"""What a stranger's mDNS adverts make agent.discovery.service.Discovery keep is bounded (review11b, finding 2).

Before: every advert with an unseen cluster id, an unparsable TXT or an address claiming our id added a key holding
the advert's text to ``Discovery._said`` (~290 B each, never freed: 482 keys after 600 adverts), and every advert
started a resolve (up to 2 s, sending queries) with no cap on how many ran at once.
"""

from __future__ import annotations

import asyncio
import os
import random

import httpx

from agent.discovery import swim as sw
from agent.discovery.service import MAX_RESOLVING, SAID_MAX, Discovery
from agent.discovery.txt import SERVICE_TYPE, cluster_id
from agent.identity import Identity
from agent.peer_client import PeerClient

TOKEN = "unit-cluster-token-0123456789"


def discovery(address: str = "127.0.0.1", use_mdns: bool = False) -> Discovery:
    ident = Identity("victim", TOKEN, None)
    return Discovery("victim", 7000, address, address, lambda: None, PeerClient(ident, lambda url: None),  # type: ignore[arg-type,return-value]
                     httpx.AsyncClient(), sw.SwimConfig(), lambda: [], 7001, cluster_id(TOKEN),
                     use_mdns=use_mdns)  # fmt: skip


def props(node_id: str, cluster: str, **extra: str) -> dict[bytes, bytes]:
    p = {"id": node_id, "port": "7000", "pv": "1", "c": cluster, "pp": "7001", **extra}
    return {k.encode(): v.encode() for k, v in p.items()}


def test_a_strangers_adverts_leave_a_bounded_said_table_and_are_counted() -> None:
    d = discovery()
    rng = random.Random(0)
    n = 3000
    for i in range(n):  # the review's attack (a new 'cluster' each) and its kin: unparsable, our own id elsewhere
        name = f"x{i}.{SERVICE_TYPE}"
        kind = i % 3
        if kind == 0:
            d._advert(name, props(f"x{i}", os.urandom(120).hex()), ["10.9.9.9"])
        elif kind == 1:
            bad = {"pv": "9"} if i % 2 else {"id": f"x.{i}"}  # an unknown protocol version, an id that is no label
            d._advert(name, {**props(f"x{i}", cluster_id(TOKEN), junk=f"{rng.random()}"),
                             **{k.encode(): v.encode() for k, v in bad.items()}}, ["10.9.9.9"])  # fmt: skip
        else:
            d._advert(name, props("victim", cluster_id(TOKEN)), [f"10.9.{i // 256 % 256}.{i % 256}"])
    assert d._said == {"cluster", "txt:protocol version", "txt:node id", "dup"}  # one line per kind, the rest counted
    assert (d.mdns["other_cluster"], d.mdns["malformed"], d.mdns["own_id"]) == (n // 3, n // 3, n // 3)


def test_the_said_table_is_bounded_whatever_its_keys() -> None:
    d = discovery()
    for i in range(10 * SAID_MAX):  # e.g. candidates that fail admission, each under its own id
        d._say_once(f"cand:x{i}:https://10.9.9.9:{i}", 10, "candidate %s failed", i)
        assert len(d._said) <= SAID_MAX


def test_adverts_of_our_cluster_become_bounded_candidates() -> None:
    d = discovery()
    for i in range(500):
        d._advert(f"g{i}.{SERVICE_TYPE}", props(f"g{i}", cluster_id(TOKEN)), ["10.9.9.9"])
    core = d.swim.core
    assert d.mdns["hinted"] == 500 and len(core.candidates) == core.config.max_candidates
    assert core.replaced == 500 - core.config.max_candidates and not core.conflicts and not d._said


def test_resolves_in_flight_are_capped_and_the_rest_counted() -> None:
    """Real zeroconf bound to 127.0.0.1; names nobody answers for, so each resolve runs its whole 2 s."""
    from zeroconf import IPVersion, ServiceStateChange
    from zeroconf.asyncio import AsyncZeroconf

    async def run() -> tuple[int, int, int, int]:
        d = discovery()
        d._zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            for i in range(3 * MAX_RESOLVING):
                for _ in range(2):  # an update while it resolves starts nothing more
                    d._on_service(d._zc.zeroconf, SERVICE_TYPE, f"nobody{i}.{SERVICE_TYPE}", ServiceStateChange.Added)
            in_flight, dropped = len(d._resolving), d.mdns["resolve_dropped"]
            while d._resolving:
                await asyncio.sleep(0.1)
            return in_flight, dropped, d.mdns["unanswered"], len(d._resolving)
        finally:
            await d._zc.async_close()

    in_flight, dropped, unanswered, left = asyncio.run(run())
    assert in_flight == MAX_RESOLVING and dropped == 2 * 2 * MAX_RESOLVING  # 128 names, each twice
    assert unanswered == MAX_RESOLVING and left == 0
