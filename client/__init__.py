"""peerserve's client library: find agents, ask where a model is best served, predict (httpx + zeroconf only)."""

from client.core import AsyncClient, Client, Endpoint
from client.errors import (
    ClusterUnreachableError,
    NoCapacityError,
    NotReadyError,
    PeerserveError,
    RequestError,
    UnknownModelError,
)

__all__ = [
    "AsyncClient",
    "Client",
    "ClusterUnreachableError",
    "Endpoint",
    "NoCapacityError",
    "NotReadyError",
    "PeerserveError",
    "RequestError",
    "UnknownModelError",
]
