"""The mDNS TXT record: what a node advertises, kept under 400 bytes, updated only on meaningful change.

Keys (short, RFC 6763 6.4): ``id`` node id, ``port`` API port, ``pv`` protocol version, ``c`` cluster id
(a digest of the cluster token: agents of other clusters on the same network ignore each other), ``cv`` catalogue
version, ``m`` ready models comma-separated (or ``md`` a digest when the list would not fit), ``mt`` / ``ma``
memory total / available (MB), ``g`` GPU load (%; empty when unknown), ``t`` highest leader term, ``pp``
the peer-plane port (mutual TLS). Liveness never comes from here (heartbeats do), nor membership: the TXT
is a hint of who may exist and where; a node is admitted only by an authenticated heartbeat.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import PeerError

PROTOCOL_VERSION = "1"
SERVICE_TYPE = "_peerserve._tcp.local."
TXT_LIMIT = 400  # bytes, RFC 6763 6.2
MIN_UPDATE_INTERVAL_S = 1.0  # RFC 6762 6: at most once a second
LOAD_STEP = 5.0  # GPU load points that count as a change
MEMORY_STEP = 0.05  # share of total memory that counts as a change
STABLE_KEYS = ("id", "port", "pv", "c", "cv", "m", "md", "t", "pp")


def cluster_id(token: str) -> str:
    """A public name for the cluster a token defines (no token: the open cluster)."""
    if not token:
        return "open"
    return hashlib.sha256(f"peerserve-cluster:{token}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Advert:
    """What a peer's TXT record says, validated."""

    node_id: str
    port: int
    protocol: str
    cluster: str
    catalogue_version: str
    models: tuple[str, ...] | None  # None when only a digest was advertised
    mem_total_mb: float
    mem_available_mb: float
    gpu_load: float | None
    term: int
    peer_port: int = 0


def peer_address(addresses: Iterable[str]) -> str | None:
    """The address an advert's node is reached at: its first unicast IPv4 address (None: it has none).

    The peer plane is IPv4 only: we advertise and listen on IPv4, and a member's peer URL travels in gossip as
    ``https://IPv4:PORT`` (peerserve.names.PEER_URL), so a candidate at an IPv6 address could never be gossiped.
    Anyone may add AAAA records (or list one first) to an advert; before, its first address was taken as it came
    and ``https://fe80::1:PORT`` (no brackets) broke the admission task with a ValueError (review13a F5). Zeroconf
    lists IPv4 addresses first, but a caller may not; unspecified, broadcast and multicast ones are skipped."""
    for text in addresses:
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            continue
        if not (address.is_unspecified or address.is_multicast or address == ipaddress.IPv4Address(0xFFFFFFFF)):
            return str(address)
    return None


def encoded_size(txt: Mapping[str, str]) -> int:
    """Bytes the TXT record takes on the wire (a length byte plus key=value per entry)."""
    return sum(1 + len(k.encode()) + 1 + len(v.encode()) for k, v in txt.items())


def build_txt(
    node_id: str,
    port: int,
    cluster: str,
    catalogue_version: str,
    models: list[str],
    mem_total_mb: float,
    mem_available_mb: float,
    gpu_load: float | None,
    term: int,
    peer_port: int = 0,
) -> dict[str, str]:
    """The TXT properties for this node; the model list becomes a digest if it would not fit."""
    txt = {
        "id": node_id,
        "port": str(port),
        "pv": PROTOCOL_VERSION,
        "c": cluster,
        "cv": catalogue_version[:32],
        "m": ",".join(sorted(models)),
        "mt": str(round(mem_total_mb)),
        "ma": str(round(mem_available_mb)),
        "g": "" if gpu_load is None else str(round(gpu_load)),
        "t": str(term),
        "pp": str(peer_port or port + 1),
    }
    if encoded_size(txt) > TXT_LIMIT:
        del txt["m"]
        txt["md"] = hashlib.sha256(",".join(sorted(models)).encode()).hexdigest()[:16]
    return txt


def should_update(
    published: Mapping[str, str] | None, candidate: Mapping[str, str], last_at: float, now: float
) -> bool:
    """Whether to re-announce: a stable field changed, or load/memory moved a real step; never within 1 s."""
    if published is None:
        return True
    if now - last_at < MIN_UPDATE_INTERVAL_S:
        return False
    if any(published.get(k) != candidate.get(k) for k in STABLE_KEYS):
        return True
    try:
        total = max(1.0, float(candidate.get("mt", "0")))
        if abs(float(published.get("ma", "0")) - float(candidate.get("ma", "0"))) >= MEMORY_STEP * total:
            return True
        old_g, new_g = published.get("g", ""), candidate.get("g", "")
        if (old_g == "") != (new_g == ""):
            return True
        return bool(old_g and abs(float(old_g) - float(new_g)) >= LOAD_STEP)
    except ValueError:
        return True


def parse_txt(properties: Mapping[Any, Any]) -> Advert:
    """Validate a peer's TXT properties; raises PeerError on anything malformed or incompatible."""
    props: dict[str, str] = {}
    size = 0
    for k, v in properties.items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)
        value = "" if v is None else (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v))
        props[key] = value
        size += 2 + len(key) + len(value)
    if size > 1300:
        raise PeerError(f"TXT record of {size} bytes is oversized")
    if props.get("pv") != PROTOCOL_VERSION:
        raise PeerError(f"unknown protocol version {props.get('pv')!r} (we speak {PROTOCOL_VERSION})")
    node_id = props.get("id", "")
    if not node_id or len(node_id) > 63 or "." in node_id:
        raise PeerError(f"invalid node id {node_id[:70]!r}")
    try:
        port = int(props.get("port", ""))
        peer_port = int(props.get("pp") or port + 1)
        if not 0 < port < 65536 or not 0 < peer_port < 65536:
            raise ValueError(port)
        models = tuple(m for m in props["m"].split(",") if m) if "m" in props else None
        gpu = props.get("g", "")
        return Advert(
            node_id=node_id,
            port=port,
            protocol=props["pv"],
            cluster=props.get("c", "open"),
            catalogue_version=props.get("cv", ""),
            models=models,
            mem_total_mb=float(props.get("mt", "0")),
            mem_available_mb=float(props.get("ma", "0")),
            gpu_load=float(gpu) if gpu else None,
            term=int(props.get("t", "0")),
            peer_port=peer_port,
        )
    except (ValueError, KeyError) as exc:
        raise PeerError(f"malformed TXT record from {node_id}: {exc}") from exc
