"""Discovery: advertise this node over mDNS, browse for peers, run SWIM membership, keep the peer table.

I/O only; every decision is agent.discovery.swim (membership: probes, suspicion, gossip) or
agent.discovery.txt (what and when to advertise); agent.discovery.swim_io carries SWIM's instructions out.
python-zeroconf is bound to the configured interface (127.0.0.1 in the demo and tests). mDNS adverts,
seeds and gossip are hints: only the node's own authenticated answer (agent.peer_client: mutual TLS, signed
both ways) admits it. A state answer may advertise only the peer's own endpoints (URLs at the address we
reached it at) of catalogue models; anything else is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import httpx

from agent.discovery.swim import Admit, SwimConfig, Transition
from agent.discovery.swim_io import SwimDriver
from agent.discovery.txt import SERVICE_TYPE, build_txt, parse_txt, peer_address, should_update
from agent.errors import PeerError
from agent.peer_client import PeerCallError, PeerClient
from agent.peers import Member
from agent.revocation_sync import RevocationSync
from peerserve import wire
from peerserve.wire import PeerState, SwimMessage

log = logging.getLogger(__name__)

SEED_RETRY_S = 5.0
# A seed's GET /cluster is only a hint, so waiting costs nothing; at 1 s a loaded seed (load average 25, 25
# agents) never answered in time and a joiner stayed alone for minutes (and led a cluster of one).
SEED_TIMEOUT_S = 5.0
LOADS_REFRESH_S = 1.0  # members() shows load changes alone this late at most (agent.peers consumers: provisioning)
# Anyone on the LAN can multicast adverts: what they make us keep is bounded. Log lines said once: remembered up to
# SAID_MAX keys, then forgotten all at once (as agent.leadership and swim_io do; a line may then be said again);
# keys name a kind, not the advert's text, where the text is the stranger's (cluster ids, TXT errors, addresses).
SAID_MAX = 256
# mDNS names being resolved at once (each up to RESOLVE_MS, sending queries): past it an advert is dropped,
# counted (``mdns["resolve_dropped"]``); one name is resolved once at a time. A real node's advert dropped in such a
# burst is seen at its next TXT update (models, term, a load or memory step), or when it contacts us itself (its
# signed state request or SWIM message: ``heard_from`` / ``Swim.received``, slots no stranger can fill).
MAX_RESOLVING = 64
RESOLVE_MS = 2000
# outcomes of the adverts we see (a fixed set: peerserve_mdns_adverts_total{outcome}, agent.discovery.metrics);
# "no_ipv4": an advert of our cluster with no IPv4 address (the peer plane is IPv4 only: txt.peer_address)
MDNS_OUTCOMES = (
    "hinted", "other_cluster", "malformed", "own_id", "no_ipv4", "loopback", "unanswered", "resolve_dropped",
)  # fmt: skip
# Candidates that fail to authenticate: each (id, URL) said once, and of those at most one line every
# UNAUTHENTICATED_LOG_S, the next one that goes saying how many were held back. Keyed by the stranger's made-up names
# alone, a flood of them was a line each (152 lines/s, ~148 MiB of log an hour: review26b F2).
UNAUTHENTICATED_LOG_S = 60.0


def resolve_interfaces(interface: str, advertise_address: str) -> list[str] | None:
    """zeroconf ``interfaces`` for a setting: 'all' -> every interface (None), an IP, or an interface name."""
    if interface == "all":
        return None
    if interface == "auto":
        return [advertise_address] if advertise_address else None
    try:
        socket.inet_aton(interface)
        return [interface]
    except OSError:
        pass
    import ifaddr

    for adapter in ifaddr.get_adapters():
        if adapter.name == interface:
            ips = [str(ip.ip) for ip in adapter.ips if isinstance(ip.ip, str)]
            if ips:
                return ips
    raise ValueError(f"no IPv4 address on interface {interface!r}")


class Discovery:
    """The peer table (implements agent.peers.PeerTable) and the tasks that keep it current."""

    def __init__(
        self,
        node_id: str,
        api_port: int,
        advertise_address: str,
        interface: str,
        local_state: Callable[[], PeerState],
        peers: PeerClient,
        http: httpx.AsyncClient,
        config: SwimConfig,
        models: Callable[[], Collection[str]],
        peer_port: int,
        cluster: str,
        seeds: list[str] | None = None,
        use_mdns: bool = True,
        on_change: Callable[[list[Transition]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        version_file: Path | None = None,
    ) -> None:
        self.node_id = node_id
        self.api_port = api_port
        self.address = advertise_address
        self.interface = interface
        self.local_state = local_state
        self.peers = peers
        self.http = http
        self.models = models
        self.peer_port = peer_port
        self.seeds = [s.rstrip("/") for s in seeds or [] if s]
        self.use_mdns = use_mdns
        self.on_change = on_change
        self.clock = clock
        self.swim = SwimDriver(node_id, f"https://{advertise_address}:{peer_port}", peers, config, local_state,
                               self.admissible, self._apply, clock, wall, version_file)  # fmt: skip
        self.swim.on_admit_failed = self._admit_failed  # type: ignore[method-assign]
        # operator-CA mode: the revocation list travels between members (agent.revocation_sync)
        self.revocations: RevocationSync | None = None
        if peers.identity.operator is not None:
            self.revocations = RevocationSync(peers.identity.operator.revocations, peers, self._member_url, clock)
            self.swim.revocation_advert = self.revocations.advert
            self.swim.on_revocations = self.revocations.heard
        self.cluster = cluster
        self.stopping = False
        self._zc: Any = None
        self._info: Any = None
        self._browser: Any = None
        self._published: dict[str, str] | None = None
        self._published_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._members_key: tuple[Any, ...] = ()
        self._members: list[Member] = []
        self._members_at = -1e9
        self._resolving: dict[str, asyncio.Task[None]] = {}  # mDNS name -> its resolve (at most MAX_RESOLVING)
        self._said: set[str] = set()
        self._unauthenticated_at = -math.inf  # when a failed admission was last said (UNAUTHENTICATED_LOG_S)
        self._unauthenticated_held = 0  # failed admissions of new candidates not said since
        self.mdns: Counter[str] = Counter(dict.fromkeys(MDNS_OUTCOMES, 0))
        self.mdns_ready = asyncio.Event()  # set once our name is registered over mDNS (or cannot be, or no mDNS)

    # -- PeerTable -----------------------------------------------------------------------------------
    def members(self) -> list[Member]:
        """Admitted peers only (each answered us itself, authenticated), with their last fetched state."""
        records = self.swim.core.records.values()
        key = tuple((r.node_id, r.status, r.peer_url, r.address, r.state.version, r.state.started_at) for r in records)
        now = self.clock()
        # the election asks 10 times a second: rebuild on a change, and for loads alone (they ride on every SWIM
        # message, so they change all the time) at most once per LOADS_REFRESH_S
        if key != self._members_key or (now - self._members_at >= LOADS_REFRESH_S and self._loads_changed()):
            self._members_key, self._members, self._members_at = key, self._build_members(), now
        return list(self._members)

    def _loads_changed(self) -> bool:
        built = {m.node_id: (m.mem_available_mb, m.cpu_load, m.gpu_load) for m in self._members}
        return any(built.get(r.node_id) != (r.state.mem_available_mb, r.state.cpu_load, r.state.gpu_load)
                   for r in self.swim.core.records.values())  # fmt: skip

    def _build_members(self) -> list[Member]:
        out = []
        for rec in sorted(self.swim.core.records.values(), key=lambda r: r.node_id):
            s = rec.state
            out.append(Member(node_id=rec.node_id, address=rec.address, api_url=s.api_url,
                              status="dead" if rec.status == "left" else rec.status,
                              endpoints={m: list(u) for m, u in s.endpoints.items()},
                              mem_available_mb=s.mem_available_mb, gpu_load=s.gpu_load, cpu_load=s.cpu_load,
                              node_class=s.node_class, mem_total_mb=s.mem_total_mb, priority=s.priority,
                              peer_url=rec.peer_url))  # fmt: skip
        return out

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self.swim.run(), name="membership")]
        if self.use_mdns:  # registering probes the name for ~1 s: membership (known peers, seeds) goes first
            self._tasks.append(asyncio.create_task(self._mdns(), name="mdns-advertise"))
        else:
            self.mdns_ready.set()
        if self.seeds:
            self._tasks.append(asyncio.create_task(self._seed_loop(), name="seeds"))
        for task in self._tasks:
            task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A long-running task ended: said at once if by an exception (its loop is gone), not when we stop it."""
        if not task.cancelled() and task.exception() is not None:
            log.error("discovery task %s ended", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        """Leave gracefully: tell alive peers, send the mDNS goodbye, stop the tasks."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # an exception was said when it ended
                await task
        await self.swim.stop()
        if self.revocations is not None:
            await self.revocations.stop()
        for resolving in list(self._resolving.values()):
            resolving.cancel()
        peers = [(r.node_id, r.peer_url) for r in self.swim.core.records.values() if r.status in ("alive", "suspect")]
        await asyncio.gather(*(self._post_leave(node, url) for node, url in peers), return_exceptions=True)
        if self._zc is not None:
            with contextlib.suppress(Exception):
                if self._browser is not None:
                    await self._browser.async_cancel()
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
            self._zc = None

    async def _post_leave(self, node_id: str, url: str) -> None:
        with contextlib.suppress(PeerCallError):
            await self.peers.call(node_id, url, "POST", wire.ROUTE_LEAVE, body=wire.Leave(self.node_id).to_json(),
                                  timeout=0.5)  # fmt: skip

    # -- mDNS ------------------------------------------------------------------------------------------
    async def _mdns(self) -> None:
        try:
            await self._start_mdns()
        except Exception as exc:  # no multicast here: heartbeats, seeds and known peers still work
            log.error("mDNS unavailable on %s: %s", self.interface, exc)
            return
        finally:
            self.mdns_ready.set()
        await self._advertise_loop()

    async def _start_mdns(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        interfaces = resolve_interfaces(self.interface, self.address)
        self._zc = AsyncZeroconf(
            interfaces=interfaces if interfaces is not None else "all", ip_version=IPVersion.V4Only
        )
        self._info = self._service_info(self._txt())
        try:
            await self._zc.async_register_service(self._info, allow_name_change=False)
            self._published, self._published_at = dict(self._txt()), self.clock()
            log.info("advertising %s at %s:%d over mDNS (interfaces %s)", self.node_id, self.address,
                     self.api_port, interfaces or "all")  # fmt: skip
        except Exception as exc:  # NonUniqueNameException and friends: keep running unadvertised
            log.error("cannot advertise %s over mDNS (duplicate node id on the network?): %s", self.node_id, exc)
            self._info = None
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_service])

    def _txt(self) -> dict[str, str]:
        s = self.local_state()
        return build_txt(self.node_id, self.api_port, self.cluster, s.catalogue_version, sorted(s.endpoints),
                         s.mem_total_mb, s.mem_available_mb, s.gpu_load, s.term, self.peer_port)  # fmt: skip

    def _service_info(self, txt: dict[str, str]) -> Any:
        from zeroconf.asyncio import AsyncServiceInfo

        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.node_id}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(self.address)],
            port=self.api_port,
            properties=txt,
            server=f"{self.node_id}.local.",
        )

    async def _advertise_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if self._info is None or self._zc is None:
                continue
            try:  # one failed update (our state, zeroconf) must not end advertising
                txt = self._txt()
                now = self.clock()
                if should_update(self._published, txt, self._published_at, now):
                    self._info = self._service_info(txt)
                    await self._zc.async_update_service(self._info)
                    self._published, self._published_at = txt, now
            except Exception as exc:
                self._say_once(f"mdns-update:{type(exc).__name__}", logging.WARNING, "mDNS update failed: %s", exc)

    def _on_service(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        node_id = name[: -len(service_type) - 1] if name.endswith(service_type) else name
        if state_change is ServiceStateChange.Removed:
            self.swim.core.recheck(node_id, self.swim.clock())  # an unauthenticated goodbye: check, never conclude
            self.swim.wake()
            return
        if name in self._resolving:  # an update while it resolves: that resolve reads the fresh records
            return
        if len(self._resolving) >= MAX_RESOLVING:  # a stranger's burst of names: each resolve sends queries
            self.mdns["resolve_dropped"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._resolving[name] = task
        task.add_done_callback(lambda _t: self._resolving.pop(name, None))

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zc is None:
            return
        try:  # anyone's advert: whatever it does to zeroconf or to us, counted and said once, never a dead task
            info = AsyncServiceInfo(service_type, name)
            if not await info.async_request(self._zc.zeroconf, RESOLVE_MS):
                self.mdns["unanswered"] += 1
                return
            self._advert(name, info.properties or {}, info.parsed_addresses())
        except Exception as exc:
            self.mdns["malformed"] += 1
            self._say_once(f"resolve:{type(exc).__name__}", logging.WARNING, "ignoring mDNS service %s: %s: %s (%s)",
                           name[:100], type(exc).__name__, exc, _ONCE)  # fmt: skip

    def _advert(self, name: str, properties: dict[Any, Any], addresses: list[str]) -> None:
        """A resolved advert (anyone's): a candidate of our cluster, or ignored, counted in ``mdns`` by outcome."""
        try:
            advert = parse_txt(properties)
            if not addresses:
                raise PeerError("no address in the mDNS record")
        except PeerError as exc:
            self.mdns["malformed"] += 1
            reason = next((r for r in _TXT_REASONS if r in str(exc)), "other")  # a fixed set, not the advert's text
            self._say_once(f"txt:{reason}", logging.WARNING, "ignoring mDNS service %s: %s (%s)", name[:100], exc,
                           _ONCE)  # fmt: skip
            return
        if advert.cluster != self.cluster:
            self.mdns["other_cluster"] += 1
            self._say_once("cluster", logging.INFO, "ignoring agents of another cluster (%s, e.g. %s; %s)",
                           advert.cluster[:16], name[:100], _ONCE)  # fmt: skip
            return
        address = peer_address(addresses)
        if address is not None and _loopback(address) and not _loopback(self.address):
            # a loopback address names the hearer's own host: heard from the LAN, admitting it would make us connect
            # to a port of ours the stranger chose (review26b F2); on a loopback bed (the demo) it is a peer
            self.mdns["loopback"] += 1
            msg = "ignoring mDNS service %s: a loopback address (%s) heard on a LAN interface (%s)"
            self._say_once("loopback", logging.WARNING, msg, name[:100], address, _ONCE)
            return
        if advert.node_id == self.node_id:
            if address != self.address or advert.port != self.api_port:
                self.mdns["own_id"] += 1
                msg = "another node at %s advertises our node id %s; ignored (%s)"
                self._say_once("dup", logging.ERROR, msg, str(addresses[0])[:64], self.node_id, _ONCE)
            return
        if address is None:  # IPv6 only (or junk): we could never reach it, nor gossip its URL
            self.mdns["no_ipv4"] += 1
            msg = "ignoring mDNS service %s: no IPv4 address (%s; the peer plane is IPv4 only; %s)"
            self._say_once("no_ipv4", logging.WARNING, msg, name[:100], str(addresses[0])[:64], _ONCE)
            return
        peer_url = f"https://{address}:{advert.peer_port}"
        self.mdns["hinted"] += 1
        self.swim.core.hint(advert.node_id, peer_url, address, self.clock())
        self.swim.wake()
        for node_id, claimed in self.swim.core.conflicts:  # our own id, heard from another url (a bounded set)
            self._say_once(f"conflict:{claimed}", logging.ERROR, "node id %s (ours) claimed by %s; ignored", node_id,
                           claimed)  # fmt: skip

    # -- membership ------------------------------------------------------------------------------------
    def _admit_failed(self, ins: Admit, exc: Exception) -> None:
        key = f"cand:{ins.node_id}:{ins.url}"
        if key in self._said:
            return
        now = self.clock()
        if now - self._unauthenticated_at < UNAUTHENTICATED_LOG_S:
            self._unauthenticated_held += 1  # said in the next line that goes (or never, if none comes)
            return
        held, self._unauthenticated_held, self._unauthenticated_at = self._unauthenticated_held, 0, now
        more = f"; {held} other candidates failed since the last such line" if held else ""
        msg = "candidate %s at %s did not authenticate (not admitted): %s%s"
        self._say_once(key, logging.WARNING, msg, ins.node_id[:64], ins.url[:100], exc, more)

    async def handle_swim(self, sender: str, msg: SwimMessage) -> SwimMessage:
        """POST /peer/swim from ``sender`` (authenticated; the message names it): our answer."""
        return await self.swim.handle(sender, msg)

    def _member_url(self, node_id: str) -> str | None:
        """Where an admitted member that is not dead listens (None: no such member)."""
        rec = self.swim.core.records.get(node_id)
        return rec.peer_url if rec is not None and rec.status != "dead" else None

    def stamp(self, state: PeerState) -> PeerState:
        """Our GET /peer/state answer with our membership version and incarnation."""
        return self.swim.stamp(state)

    def admissible(self, state: PeerState, peer_url: str) -> PeerState:
        """``state`` if it speaks only for its sender; raises PeerError when it advertises others' servers."""
        host = httpx.URL(peer_url).host
        known = set(self.models())
        if httpx.URL(state.api_url).host != host:
            raise PeerError(f"its api_url {state.api_url} is not at its own address {host}")
        for model, urls in state.endpoints.items():
            if model not in known:
                raise PeerError(f"it advertises {model!r}, which is not in the catalogue")
            if any(httpx.URL(u).host != host for u in urls):
                raise PeerError(f"it advertises servers of {model} outside its own address {host}")
        return state

    async def _seed_loop(self) -> None:
        known: set[str] = set()
        while True:
            admitted = {r.state.api_url for r in self.swim.core.records.values() if r.status == "alive"}
            for seed in self.seeds:
                if seed in known or seed in admitted:
                    continue
                try:  # public and unauthenticated: only a hint of whom to heartbeat, and where
                    r = await self.http.get(f"{seed}/cluster", timeout=SEED_TIMEOUT_S)
                    hint = wire.ClusterHint.parse(r.json())
                except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # InvalidURL: not an HTTPError
                    self._say_once(f"seed:{seed}", logging.INFO, "seed %s not reachable yet: %s", seed, exc)
                    continue
                if hint.node_id == self.node_id:
                    known.add(seed)
                    continue
                host = httpx.URL(seed).host
                if ":" in host:  # an IPv6 literal: the peer plane is IPv4 only (txt.peer_address)
                    self._say_once(f"seed6:{seed}", logging.WARNING, "seed %s: IPv6, ignored (peers speak IPv4)", seed)
                    continue
                peer_url = f"https://{host}:{hint.peer_port}"
                self.swim.core.hint(hint.node_id, peer_url, host, self.clock())
                self.swim.wake()
            await asyncio.sleep(SEED_RETRY_S)

    def heard_from(self, node_id: str, peer_url: str) -> None:
        """An authenticated heartbeat from ``node_id``, listening at ``peer_url`` (its word, signed; or a peer of
        our last run, from our own disk): a candidate in the slots strangers cannot fill, if it is not a live
        member (admission still needs its authenticated answer there)."""
        rec = self.swim.core.records.get(node_id)
        if rec is None or rec.status in ("dead", "left"):
            self.swim.core.hint(node_id, peer_url, httpx.URL(peer_url).host, self.clock(), vouched=True)
            self.swim.wake()

    def peer_left(self, node_id: str) -> None:
        """A peer told us, authenticated, that it is leaving (POST /peer/leave)."""
        self._apply(self.swim.core.left(node_id, self.clock()))
        self.swim.wake()

    def _apply(self, transitions: list[Transition]) -> None:
        """Log transitions; tell the agent of joins, deaths and returns (a suspicion that clears is no news:
        each one would start a placement round, and SWIM suspects after a single missed probe round)."""
        for t in transitions:
            level = logging.DEBUG if {t.old, t.new} <= {"alive", "suspect"} else logging.INFO
            log.log(level, "peer %s: %s -> %s (%s)", t.node_id, t.old, t.new, t.reason)
        news = [t for t in transitions if not {t.old, t.new} <= {"alive", "suspect"}]
        if news and self.on_change is not None:
            self.on_change(news)

    def _say_once(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self._said:
            if len(self._said) >= SAID_MAX:
                self._said.clear()  # bounded: keys of candidates and seeds come and go
            self._said.add(key)
            log.log(level, message, *args)


_ONCE = "logged once; all counted in peerserve_mdns_adverts_total"
# what agent.discovery.txt.parse_txt (and _advert) refuse, by kind: one log line each
_TXT_REASONS = ("protocol version", "node id", "oversized", "malformed", "no address")


def _loopback(address: str) -> bool:
    """Whether ``address`` is an IPv4 loopback address (127.0.0.0/8); an unreadable one is not."""
    try:
        return ipaddress.IPv4Address(address).is_loopback
    except ValueError:
        return False
