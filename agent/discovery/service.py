"""Discovery: advertise this node over mDNS, browse for peers, heartbeat them, keep the peer table.

I/O only; every decision is agent.discovery.membership (status) or agent.discovery.txt (what and when to
advertise). python-zeroconf is bound to the configured interface (127.0.0.1 in the demo and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx

from agent.discovery.membership import Membership, MembershipConfig, Transition, parse_peer_state
from agent.discovery.txt import SERVICE_TYPE, build_txt, cluster_id, parse_txt, should_update
from agent.errors import PeerError
from agent.peers import Member

log = logging.getLogger(__name__)

TICK_S = 0.1
SEED_RETRY_S = 5.0


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
        local_state: Callable[[], dict[str, Any]],
        http: httpx.AsyncClient,
        config: MembershipConfig,
        token: str = "",
        seeds: list[str] | None = None,
        use_mdns: bool = True,
        on_change: Callable[[list[Transition]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.api_port = api_port
        self.address = advertise_address
        self.interface = interface
        self.local_state = local_state
        self.http = http
        self.token = token
        self.seeds = [s.rstrip("/") for s in seeds or [] if s]
        self.use_mdns = use_mdns
        self.on_change = on_change
        self.clock = clock
        self.membership = Membership(node_id, config)
        self.cluster = cluster_id(token)
        self.stopping = False
        self._zc: Any = None
        self._info: Any = None
        self._browser: Any = None
        self._published: dict[str, str] | None = None
        self._published_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._said: set[str] = set()

    # -- PeerTable -----------------------------------------------------------------------------------
    def members(self) -> list[Member]:
        return self.membership.members()

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.use_mdns:
            await self._start_mdns()
        self._tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeats")]
        if self.use_mdns:
            self._tasks.append(asyncio.create_task(self._advertise_loop(), name="mdns-advertise"))
        if self.seeds:
            self._tasks.append(asyncio.create_task(self._seed_loop(), name="seeds"))

    async def stop(self) -> None:
        """Leave gracefully: tell alive peers, send the mDNS goodbye, stop the tasks."""
        self.stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        peers = [r.api_url for r in self.membership.records.values() if r.status != "dead"]
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        await asyncio.gather(*(self._post_leave(url, headers) for url in peers), return_exceptions=True)
        if self._zc is not None:
            with contextlib.suppress(Exception):
                if self._browser is not None:
                    await self._browser.async_cancel()
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
            self._zc = None

    async def _post_leave(self, url: str, headers: dict[str, str]) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(f"{url}/peer/leave", json={"node_id": self.node_id}, headers=headers, timeout=0.5)

    # -- mDNS ------------------------------------------------------------------------------------------
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
        return build_txt(
            self.node_id,
            self.api_port,
            self.cluster,
            str(s.get("catalogue_version", "")),
            sorted(s.get("endpoints", {})),
            float(s.get("mem_total_mb", 0.0)),
            float(s.get("mem_available_mb", 0.0)),
            s.get("gpu_load"),
            int(s.get("term", 0)),
        )

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
            txt = self._txt()
            now = self.clock()
            if should_update(self._published, txt, self._published_at, now):
                self._info = self._service_info(txt)
                try:
                    await self._zc.async_update_service(self._info)
                    self._published, self._published_at = txt, now
                except Exception as exc:
                    self._say_once(f"mdns-update:{exc}", logging.WARNING, "mDNS update failed: %s", exc)

    def _on_service(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        node_id = name[: -len(service_type) - 1] if name.endswith(service_type) else name
        if state_change is ServiceStateChange.Removed:
            self._apply(self.membership.left(node_id, self.clock()))
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 2000):
            return
        try:
            advert = parse_txt(info.properties or {})
            addresses = info.parsed_addresses()
            if not addresses:
                raise PeerError("no address in the mDNS record")
        except PeerError as exc:
            self._say_once(f"txt:{name}:{exc}", logging.WARNING, "ignoring mDNS service %s: %s", name, exc)
            return
        if advert.cluster != self.cluster:
            self._say_once(f"cluster:{advert.cluster}", logging.INFO,
                           "ignoring agents of another cluster (%s, e.g. %s)", advert.cluster, name)  # fmt: skip
            return
        if advert.node_id == self.node_id:
            if addresses[0] != self.address or advert.port != self.api_port:
                msg = "another node at %s claims our node id %s; ignored"
                self._say_once(f"dup:{addresses[0]}", logging.ERROR, msg, addresses[0], self.node_id)
            return
        address = addresses[0]
        url = f"http://{address}:{advert.port}"
        self._apply(self.membership.advertised(advert.node_id, url, address, self.clock()))
        for node_id, claimed in self.membership.conflicts:
            self._say_once(f"conflict:{node_id}:{claimed}", logging.ERROR,
                           "duplicate node id %s claimed by %s; ignored", node_id, claimed)  # fmt: skip

    # -- heartbeats --------------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            now = self.clock()
            self._apply(self.membership.tick(now))
            for node_id, url in self.membership.due_heartbeats(now):
                if node_id in self._in_flight:
                    continue
                self.membership.heartbeat_sent(node_id, now)
                self._in_flight.add(node_id)
                task = asyncio.create_task(self._heartbeat(node_id, url))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            await asyncio.sleep(TICK_S)

    async def _heartbeat(self, node_id: str, url: str) -> None:
        cfg = self.membership.config
        timeout = httpx.Timeout(max(0.2, cfg.suspect_after_s / 2), connect=max(0.2, cfg.heartbeat_interval_s))
        try:
            r = await self.http.get(f"{url}/peer/state", params={"from": self.node_id}, timeout=timeout)
            if r.status_code != 200:
                raise PeerError(f"HTTP {r.status_code}")
            state = parse_peer_state(r.json(), expected_id=node_id)
            if state.extra.get("cluster", "open") != self.cluster:
                raise PeerError("it belongs to another cluster (different cluster token)")
        except (httpx.HTTPError, ValueError, PeerError) as exc:
            if isinstance(exc, (PeerError, ValueError)):
                self._say_once(f"hb:{node_id}:{type(exc).__name__}", logging.WARNING,
                               "peer %s answered a heartbeat with garbage: %s", node_id, exc)  # fmt: skip
            return
        finally:
            self._in_flight.discard(node_id)
        self._apply(self.membership.heartbeat_ok(node_id, state, self.clock()))

    async def _seed_loop(self) -> None:
        known: set[str] = set()
        while True:
            for seed in self.seeds:
                if seed in known:
                    continue
                try:
                    r = await self.http.get(f"{seed}/peer/state", params={"from": self.node_id}, timeout=1.0)
                    state = parse_peer_state(r.json())
                    if state.extra.get("cluster", "open") != self.cluster:
                        raise PeerError("it belongs to another cluster (different cluster token)")
                except (httpx.HTTPError, ValueError, PeerError) as exc:
                    self._say_once(f"seed:{seed}", logging.INFO, "seed %s not reachable yet: %s", seed, exc)
                    continue
                if state.node_id == self.node_id:
                    known.add(seed)
                    continue
                host = httpx.URL(seed).host
                self._apply(self.membership.advertised(state.node_id, seed, host, self.clock()))
                known.add(seed)
            await asyncio.sleep(SEED_RETRY_S)

    def peer_left(self, node_id: str) -> None:
        """A peer told us it is leaving (POST /peer/leave)."""
        self._apply(self.membership.left(node_id, self.clock()))

    def _apply(self, transitions: list[Transition]) -> None:
        for t in transitions:
            level = logging.INFO if t.new in ("alive", "dead", None) else logging.DEBUG
            log.log(level, "peer %s: %s -> %s (%s)", t.node_id, t.old, t.new, t.reason)
        if transitions and self.on_change is not None:
            self.on_change(transitions)

    def _say_once(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, *args)
