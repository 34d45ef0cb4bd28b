"""The address an agent advertises when it listens on every interface: from an interface name or address."""

from __future__ import annotations

import ipaddress
import logging

from agent.errors import ConfigError

log = logging.getLogger(__name__)


def interface_address(interface: str) -> str:
    """The IPv4 address to advertise for ``interface`` (an address, a name, or auto/all: the first non-loopback)."""
    try:
        return str(ipaddress.ip_address(interface))
    except ValueError:
        pass
    import ifaddr

    adapters = ifaddr.get_adapters()
    if interface in ("auto", "all"):
        for adapter in adapters:
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                    return ip.ip
        return ""
    names = []
    for adapter in adapters:
        names.append(adapter.name)
        if adapter.name == interface:
            for ip in adapter.ips:
                if isinstance(ip.ip, str):
                    return ip.ip
            raise ConfigError("interface", f"interface {interface!r} has no IPv4 address (yet)")
    raise ConfigError("interface", f"no interface named {interface!r} here (found: {', '.join(names) or 'none'})")
