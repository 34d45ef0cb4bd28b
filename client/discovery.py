"""Find agents: an mDNS (DNS-SD) browse for ``_peerserve._tcp.local.``, or a seed list.

Anyone on the LAN can advertise the service, and an advert carries no proof of who sent it, so an agent
found here is a stranger: the client sends it no token (client/ops.py) unless the user opts in, and reads
its answers as unchecked input (client/answers.py). Adverts name a plain ``http://`` API port; an agent's
HTTPS listener is reached only by naming it (``--agent https://...``). At most MAX_FOUND are kept.
"""

from __future__ import annotations

import asyncio
import time

SERVICE_TYPE = "_peerserve._tcp.local."
MAX_FOUND = 128  # agents one browse keeps (a flood of adverts does not grow the list: ops.MAX_AGENTS)


def keep(found: dict[str, str], name: str, addresses: list[str], port: int) -> None:
    """Record an advert's API URL (its first IPv4 address): a known name is updated, a new one only while
    fewer than MAX_FOUND are kept."""
    if addresses and port and (name in found or len(found) < MAX_FOUND):
        found[name] = f"http://{addresses[0]}:{port}"


def browse(timeout: float = 2.0, interfaces: list[str] | None = None) -> list[str]:
    """Agent API URLs found by mDNS within ``timeout`` seconds (``interfaces``: addresses to bind, default all)."""
    from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

    found: dict[str, str] = {}

    class Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            info = zc.get_service_info(type_, name, timeout=1500)
            if info is not None and info.port:
                keep(found, name, info.parsed_addresses(IPVersion.V4Only), info.port)

        def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            self.add_service(zc, type_, name)

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            found.pop(name, None)

    zc = Zeroconf(interfaces=interfaces or "all", ip_version=IPVersion.V4Only)
    try:
        ServiceBrowser(zc, SERVICE_TYPE, Listener())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if found and time.monotonic() > deadline - timeout / 2:
                break
    finally:
        zc.close()
    return sorted(set(found.values()))


async def async_browse(timeout: float = 2.0, interfaces: list[str] | None = None) -> list[str]:
    """``browse`` for asyncio code: the same answer, without blocking the event loop."""
    from zeroconf import IPVersion, ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    found: dict[str, str] = {}
    pending: set[asyncio.Task[None]] = set()

    async def resolve(zc: Zeroconf, type_: str, name: str) -> None:
        info = AsyncServiceInfo(type_, name)
        if await info.async_request(zc, 1500) and info.port:
            keep(found, name, info.parsed_addresses(IPVersion.V4Only), info.port)

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
            return
        if len(pending) >= MAX_FOUND or (name not in found and len(found) >= MAX_FOUND):
            return  # a flood of adverts: no more resolutions at once, no more agents
        task = asyncio.ensure_future(resolve(zeroconf, service_type, name))
        pending.add(task)
        task.add_done_callback(pending.discard)

    azc = AsyncZeroconf(interfaces=interfaces or "all", ip_version=IPVersion.V4Only)
    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if found and time.monotonic() > deadline - timeout / 2:
                break
    finally:
        await browser.async_cancel()
        for task in list(pending):
            task.cancel()
        await azc.async_close()
    return sorted(set(found.values()))
