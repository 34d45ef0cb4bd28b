"""Pure bounds on what clients report: RTT reports and client ids (one host cannot fake demand).

A client names itself with ``X-Peerserve-Client`` and reports RTTs with ``X-Peerserve-RTT``; both reach
the leader's placement as demand. ``parse_rtt_report`` validates a report (node ids matched whole, finite
milliseconds within ``MAX_RTT_MS``, at most ``MAX_RTT_NODES`` entries, counted before any is parsed).
``ClientIds`` decides which client id a request is recorded under: each source address may use at most
``max_per_address`` distinct ids within ``window_s``; past that, its requests are recorded under the address
itself, so 200 made-up ids from one host count as at most ``max_per_address + 1`` clients. The table of addresses
is bounded too (least recently seen dropped first). The clock is passed in; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from collections.abc import Mapping

from agent.settings import NODE_ID

MAX_RECORDED_ID = 128  # a request-log client name, as the leader's parser bounds it (peerserve/wire.py)

CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
MAX_RTT_NODES = 64
MAX_RTT_MS = 60_000.0
MAX_REPORT_CHARS = 8192


class BadClientInput(ValueError):
    """A malformed client id or RTT report; the message says what is wrong (for a 400)."""


def parse_rtt_report(header: str | None, query: str | None) -> dict[str, float]:
    """``n1=2.5, n2=4`` (header) or ``n1:2.5,n2:4`` (query) -> {node: ms}; BadClientInput when malformed."""
    out: dict[str, float] = {}
    for raw, sep in ((header, "="), (query, ":")):
        if not raw:
            continue
        if len(raw) > MAX_REPORT_CHARS:
            raise BadClientInput(f"RTT report over {MAX_REPORT_CHARS} characters")
        if raw.strip(" ,").count(",") >= MAX_RTT_NODES:  # counted before any entry is parsed (review26a H1: 2,000
            # copies of one entry parsed one by one, ~5 ms a request, and collapsed to one node, so the node count
            # never tripped); a leading or trailing comma adds no entry
            raise BadClientInput(f"RTT report of over {MAX_RTT_NODES} entries")
        for part in raw.split(","):
            part = part.strip()
            if part:
                node, ms = _rtt_entry(part, sep)
                out[node] = ms
    if len(out) > MAX_RTT_NODES:
        raise BadClientInput(f"RTT report names over {MAX_RTT_NODES} nodes")
    return out


def _rtt_entry(part: str, sep: str) -> tuple[str, float]:
    node, found, value = part.partition(sep)
    node = node.strip()
    if not found or NODE_ID.fullmatch(node) is None:
        raise BadClientInput(f"bad RTT entry {part[:40]!r}: expected node{sep}ms with a node id")
    try:
        ms = float(value)
    except ValueError:
        raise BadClientInput(f"bad RTT entry {part[:40]!r}: not a number of milliseconds") from None
    if not math.isfinite(ms) or not 0 <= ms <= MAX_RTT_MS:
        raise BadClientInput(f"bad RTT entry {part[:40]!r}: milliseconds must be within 0..{MAX_RTT_MS:g}")
    return node, ms


def valid_client_id(name: str) -> bool:
    """A client id is 1-128 of letters, digits and ``_ . : @ -``, starting with a letter or digit."""
    return CLIENT_ID.fullmatch(name) is not None


def scoped(client: str, address: str) -> str:
    """The name a request is recorded under: a claimed id qualified by its source address (``id@address``).

    Client ids are claims; unqualified, a host could claim another's id (or another's address) and write
    that client's remembered RTTs, steering its endpoint answers. At most MAX_RECORDED_ID characters."""
    if client == address:
        return address
    name = f"{client}@{address}"
    if len(name) <= MAX_RECORDED_ID:
        return name
    digest = hashlib.sha256(client.encode()).hexdigest()[:8]
    return f"{client[: MAX_RECORDED_ID - len(address) - 10]}~{digest}@{address}"


def known_nodes_only(rtts: Mapping[str, float], nodes: set[str]) -> dict[str, float]:
    """The part of a report about nodes this agent knows (the rest could only grow tables)."""
    return {n: v for n, v in rtts.items() if n in nodes}


class ClientIds:
    """Which id a request is recorded under, given its source address and the id it claims."""

    def __init__(self, max_per_address: int, window_s: float, max_addresses: int = 10_000) -> None:
        self.max_per_address = max_per_address
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, dict[str, float]] = OrderedDict()  # address -> {id: last seen}

    def resolve(self, address: str, claimed: str | None, now: float) -> str:
        """The claimed id while the address has room for it in the window, else the address itself."""
        ids = self._seen.pop(address, None) or {}
        ids = {c: t for c, t in ids.items() if now - t < self.window_s}
        self._seen[address] = ids  # most recently seen last
        while len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
        if not claimed or claimed == address:
            return address
        if claimed in ids or len(ids) < self.max_per_address:
            ids[claimed] = now
            return claimed
        return address

    def ids_of(self, address: str) -> set[str]:
        """The ids an address currently holds (for tests and /health-style introspection)."""
        return set(self._seen.get(address, {}))

    def __len__(self) -> int:
        return len(self._seen)


RTT_ENTRY = r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}%s[0-9.eE+-]{1,12}"
CLIENT_INPUT = {  # parsed by client_of(), described here so the schema (and schemathesis) knows them
    "parameters": [
        {"name": "X-Peerserve-RTT", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": f"^{RTT_ENTRY % '='}(, ?{RTT_ENTRY % '='})*$"},
         "description": "the client's measured RTT to nodes in ms: 'node=ms, node=ms' (0-60000, <= 64 nodes)"},
        {"name": "X-Peerserve-Client", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"},
         "description": "the client's id (default: its address; a few per address count, the rest as the address)"},
        {"name": "rtt", "in": "query", "required": False,
         "schema": {"type": "string", "pattern": f"^{RTT_ENTRY % ':'}(,{RTT_ENTRY % ':'})*$"},
         "description": "the client's measured RTT to nodes in ms: 'node:ms,node:ms'"},
    ]
}  # fmt: skip
