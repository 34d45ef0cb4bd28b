"""Find agents: an mDNS (DNS-SD) browse for ``_peerserve._tcp.local.``, or a seed list."""

from __future__ import annotations

import asyncio
import time

SERVICE_TYPE = "_peerserve._tcp.local."


def browse(timeout: float = 2.0, interfaces: list[str] | None = None) -> list[str]:
    """Agent API URLs found by mDNS within ``timeout`` seconds (``interfaces``: addresses to bind, default all)."""
    from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

    found: dict[str, str] = {}

    class Listener(ServiceListener):
        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            info = zc.get_service_info(type_, name, timeout=1500)
            if info is None or not info.port:
                return
            addresses = info.parsed_addresses(IPVersion.V4Only)
            if addresses:
                found[name] = f"http://{addresses[0]}:{info.port}"

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
            addresses = info.parsed_addresses(IPVersion.V4Only)
            if addresses:
                found[name] = f"http://{addresses[0]}:{info.port}"

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
            return
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
