"""The names and URLs peerserve accepts anywhere: one definition for the wire, the catalogue, the settings and
the client (standard library only, so the client library can import it without the agent's dependencies).

Each rule is what the strictest user of the value can take, so nothing one part accepts is refused by
another: a model name is one path segment (the client builds ``/services/NAME`` and ``/v1/models/NAME`` from
it, so no ``..``); a node id is one DNS label (mDNS announces ``NODE.local.``); a member's or a model server's
URL is a base URL, scheme, host and port and nothing else (a peer cannot send a path, query, fragment or
credentials that a client would then follow).

    NODE_ID / valid_node_id        one DNS label of letters, digits, '-', '_' (at most 63)
    MODEL_NAME / valid_model_name  letters, digits, '_', '.', '-', at most 64, no '..'
    base_url(value)                http(s)://HOST[:PORT][/] -> the URL without its '/', else None
    PEER_URL                       https://IPv4:PORT, a peer listener as Discovery announces it: the address in
                                   its one canonical spelling (no leading zeros, four parts), the port without one
    ipv4_spelling(host)            a spelling of an IPv4 address the C resolver connects to: its dotted quad, or None
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # and no "..": valid_model_name
MAX_URL = 256  # characters of a base URL
# a host is a name (letters, digits, '_', '.', '-'), IPv4, or [IPv6] with an optional zone; the port 1-65535
BASE_URL = re.compile(
    r"(https?)://(\[[0-9A-Fa-f:.]{2,45}(?:%[A-Za-z0-9_.-]{1,32})?\]|[A-Za-z0-9][A-Za-z0-9_.-]{0,252})(?::([0-9]{1,5}))?/?"
)
# Only the canonical dotted quad (review14d Q1): the C resolver (so httpx) connects ``10.0.05``, ``012.0.5`` (octal),
# ``10.5`` and ``167772165`` to 10.0.0.5 too, and each such spelling would be its own voice in a majority.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PEER_URL = re.compile(rf"https://{_OCTET}(?:\.{_OCTET}){{3}}:[1-9][0-9]{{0,4}}")


def ipv4_spelling(host: str) -> str | None:
    """The dotted quad that ``host`` names as an IPv4 literal in any spelling the C resolver takes (``inet_aton``:
    short forms, octal and hex parts, one 32-bit number), with no lookup; None for a name or anything else. So
    ``ipv4_spelling(h) not in (None, h)``: an address in a spelling other than its canonical one."""
    if not host or not host.isascii() or host.strip() != host:
        return None
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except OSError:
        return None


def valid_node_id(value: Any) -> bool:
    """A node id: one DNS label (no dots: mDNS names the node ``NODE.local.``), matched whole."""
    return isinstance(value, str) and NODE_ID.fullmatch(value) is not None


def valid_model_name(value: Any) -> bool:
    """A model name: one path segment of letters, digits, '_', '.', '-' (no '/', no '..'), matched whole."""
    return isinstance(value, str) and MODEL_NAME.fullmatch(value) is not None and ".." not in value


def base_url(value: Any) -> str | None:
    """``value`` as a base URL without its trailing '/', or None when it is anything more or less: an http(s)
    scheme, a host, an optional port in 1-65535; no credentials, path, query or fragment."""
    if not isinstance(value, str) or len(value) > MAX_URL:
        return None
    match = BASE_URL.fullmatch(value)
    if match is None or (match.group(3) is not None and not 0 < int(match.group(3)) < 65536):
        return None
    return value.rstrip("/")
