"""peerserve's client library: find agents, ask where a model is best served, predict (httpx + zeroconf only)."""

from typing import TYPE_CHECKING

from peerserve import lazy

# The package's names load on first use (PEP 562), not on `import client`: `peerserve --help` and the other parts'
# commands import client.cli to register `endpoints`, `predict` and `cluster`, which imports this package first, and
# client.core brings httpx (~0.1-0.3 s of start-up) to every command that never asks an agent. `from client import
# Client` and `client.Client` work as before; the solver package does the same (solver/__init__.py).
_ERRORS = ("AnswerTooLarge", "ClusterUnreachableError", "NoCapacityError", "NotReadyError", "PeerserveError",
           "RequestError", "UnknownModelError")  # fmt: skip
_CORE = ("AsyncClient", "Client", "Endpoint")
_LAZY = {**dict.fromkeys(_CORE, "client.core"), **dict.fromkeys(_ERRORS, "client.errors")}

if TYPE_CHECKING:
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


if not TYPE_CHECKING:  # hidden from mypy: visible, it would type every attribute of ``client`` as Any
    __getattr__ = lazy.loader(__name__, _LAZY, globals())
    __dir__ = lazy.lister(_LAZY, globals())


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
