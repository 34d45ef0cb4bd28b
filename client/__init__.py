"""peerserve's client library: find agents, ask where a model is best served, predict (httpx + zeroconf only)."""

from client.core import AsyncClient, Client, Endpoint
from client.errors import (
    AnswerTooLarge,
    ClusterUnreachableError,
    NoCapacityError,
    NotReadyError,
    PeerserveError,
    RequestError,
    UnknownModelError,
)

__all__ = [
    "AnswerTooLarge",
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
