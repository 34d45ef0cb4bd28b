"""What a web page may make a browser send to the open client API: nothing another site chose.

The client API is open by default (docs/security.md), so any page a LAN user opens could use their browser
against it: a cross-site ``<form>`` or ``fetch(..., {mode: "no-cors"})`` POST (a "simple" request, sent
without a CORS preflight) provisions models and spends the board's memory; and a page at a name the
attacker controls can re-point that name at the agent (DNS rebinding), after which the browser treats the
agent as the page's own origin and lets it read every answer. Serious local servers refuse both (Jupyter's
``allow_remote_access`` / Host check, Grafana's and Django's origin checks, Home Assistant behind its
tokens); so does this ASGI middleware, before any route runs:

* **Host** must name the agent: any IP literal (rebinding needs a name the attacker owns, and a page at an
  IP is that IP's own origin), ``localhost``, the machine's hostname, its fully qualified name, ``HOST.local``,
  the node id and ``NODE.local`` (mDNS announces the node as ``NODE.local.``), and what ``allowed_hosts``
  adds (comma-separated names; ``*``: any Host, the check off). Else 403.
* **Origin**, when a browser sends one, must be the agent's own (its host and port those the Host header
  names; ``null`` is no origin of the agent's). Else 403.
* **Sec-Fetch-Site** ``cross-site`` or ``same-site`` is refused (403) except for a top-level navigation to the
  cluster page (``GET``/``HEAD`` of ``/`` or ``/ui`` with ``Sec-Fetch-Mode: navigate``: a link from a wiki still
  opens it; a navigation to ``/services/MODEL``, which provisions, does not).
* Body types are not checked: a page's cross-site "simple" POST (``text/plain``, a form) carries an Origin
  in every current browser (and Sec-Fetch-Site in all since 2023), refused above, while programs post JSON
  under any type (TF-Serving's own REST examples use ``curl -d``, which sends a form type).

Programs (the client library, curl, httpx, Prometheus) send no Origin and no Sec-Fetch headers, so only the
Host rule concerns them: a client that reaches the agent by a name the agent does not know needs
``allowed_hosts``. Every refusal is a JSON ``{"error": ...}`` naming what to change. The decisions are pure
functions of the request head (``refusal``); ``BrowserGuard`` only applies them.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

HOST_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,252}")  # a DNS name as a Host header carries it
DEFAULT_PORTS = {"http": 80, "https": 443}
PAGES = frozenset({"/", "/ui", "/ui/"})  # what another site may link to (agent/observe.py: the cluster page;
# /ui/ redirects to /ui)
HOST_CACHE = 1024  # distinct (Host header, scheme, rule) verdicts remembered
GUARDED = frozenset({b"host", b"origin", b"sec-fetch-site", b"sec-fetch-mode"})


@dataclass(frozen=True)
class HostRule:
    """The names the agent answers to (lower case, no trailing dot); ``any_host``: every Host passes."""

    names: frozenset[str]
    any_host: bool = False


def parse_allowed_hosts(text: str) -> tuple[frozenset[str], bool]:
    """``allowed_hosts`` (comma-separated names, or ``*``) as (names, any_host); raises ValueError on a bad entry."""
    names: set[str] = set()
    any_host = False
    for raw in text.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        if entry == "*":
            any_host = True
        elif HOST_NAME.fullmatch(entry) and ".." not in entry:
            names.add(entry)
        else:
            raise ValueError(f"{raw.strip()!r} is not a host name (letters, digits, '-', '_', '.') or '*'")
    return frozenset(names), any_host


def own_names(node_id: str, hostname: str, fqdn: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The names that reach this agent without configuration: localhost, the machine's hostname (whole and
    its first label), its fully qualified name, each first label's ``.local`` (Avahi / Bonjour), the node id
    and ``NODE.local`` (peerserve's own mDNS record), and ``extra``."""
    out = {"localhost", node_id.lower(), f"{node_id.lower()}.local"}
    for name in (hostname, fqdn):
        name = name.strip().lower().rstrip(".")
        if HOST_NAME.fullmatch(name):
            label = name.split(".")[0]
            out |= {name, label, f"{label}.local"}
    return frozenset(out | {e.lower().rstrip(".") for e in extra})


def host_rule(node_id: str, allowed_hosts: str) -> HostRule:
    """The rule for an agent with ``node_id`` and the ``allowed_hosts`` setting, on this machine."""
    extra, any_host = parse_allowed_hosts(allowed_hosts)
    return HostRule(own_names(node_id, socket.gethostname(), socket.getfqdn(), extra), any_host)


def split_authority(authority: str, scheme: str) -> tuple[str, int] | None:
    """``host[:port]`` (a Host header, or an origin's netloc) as (lower-case host without brackets or a final
    dot, port: the scheme's default when absent); None when malformed."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        host, sep, rest = authority[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = authority.partition(":")
        host = host.rstrip(".")
    if not host or (port_text and (not port_text.isdigit() or len(port_text) > 5)):
        return None
    port = int(port_text) if port_text else DEFAULT_PORTS.get(scheme, 0)
    return (host, port) if 0 < port < 65536 else None


def is_ip_literal(host: str) -> bool:
    """An IP address as it stands (an IPv6 zone is Python's to accept: ``fe80::1%eth0``; ``127.0.0.1%evil.example``
    is not an address, review12e)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str, rule: HostRule) -> bool:
    return rule.any_host or is_ip_literal(host) or host in rule.names


@functools.lru_cache(maxsize=HOST_CACHE)
def checked_host(host_header: str, scheme: str, rule: HostRule) -> tuple[tuple[str, int] | None, bool]:
    """(``split_authority``, ``host_allowed``) of a Host header, memoised: a client sends the same few values,
    and ``ipaddress`` alone cost ~10 us a request (bounded: HOST_CACHE values, least recently used dropped)."""
    authority = split_authority(host_header, scheme)
    return authority, authority is not None and host_allowed(authority[0], rule)


def refusal(
    method: str, scheme: str, headers: Mapping[str, str], rule: HostRule, path: str = ""
) -> tuple[int, str] | None:
    """Why a request with this head is refused (status, message), or None. ``headers``: lower-case names."""
    host_header = headers.get("host")
    authority, allowed = checked_host(host_header, scheme, rule) if host_header is not None else (None, True)
    if host_header is not None:
        if authority is None:
            return 400, "malformed Host header"
        if not allowed:
            return 403, (
                f"this agent does not answer to the name {authority[0][:100]!r} (a defence against DNS rebinding): "
                "reach it by its IP address, hostname or HOSTNAME.local, or add the name to its allowed_hosts "
                "setting (--allowed-hosts, PEERSERVE_ALLOWED_HOSTS)"
            )
    origin = headers.get("origin")
    if origin is not None and not same_origin(origin, authority):
        return 403, f"cross-origin request from {origin[:100]!r} refused: the client API serves its own pages only"
    site = headers.get("sec-fetch-site", "").lower()
    navigation = method in ("GET", "HEAD") and headers.get("sec-fetch-mode", "").lower() == "navigate"
    navigation = navigation and path in PAGES
    if site in ("cross-site", "same-site") and not navigation:
        return 403, f"{site} request refused: the client API serves its own pages only"
    return None


def same_origin(origin: str, authority: tuple[str, int] | None) -> bool:
    """Whether the Origin header names the host and port the request was sent to (Host: ``authority``)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in DEFAULT_PORTS or authority is None or parts.path or parts.query or parts.fragment:
        return False
    return split_authority(parts.netloc, parts.scheme) == authority


class BrowserGuard:
    """ASGI middleware: HTTP requests pass only when ``refusal`` finds nothing (else a JSON 4xx)."""

    def __init__(self, app: Any, rule: HostRule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers: dict[str, str] = {}
            for name, value in scope["headers"]:  # ASGI: names in lower case; the first of each counts
                if name in GUARDED and name.decode() not in headers:
                    headers[name.decode()] = value.decode("latin-1")
            why = refusal(scope["method"], scope.get("scheme", "http"), headers, self.rule, scope.get("path", ""))
            if why is not None:
                await send_refusal(send, *why)
                return
        await self.app(scope, receive, send)


async def send_refusal(send: Any, status: int, message: str) -> None:
    """A JSON error. The connection stays open, as after agent.client_auth's 401: the body, never handed to the
    app, is drained under the header deadline (agent/http_limits.py), and a client whose body is already on the
    way reads the answer (closing with its bytes unread would reset the connection and lose it)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
