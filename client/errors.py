"""Errors the client raises.

PeerserveError                  base
├── UnknownModelError           no such model in the cluster's catalogue (404)
├── NoCapacityError             the model fits on no node (507)
├── NotReadyError               the model is being provisioned; retry after ``retry_after`` s (503)
├── ClusterUnreachableError     no agent answered
└── RequestError                the agent or model server refused the request (other 4xx); ``status``
                                and ``code`` (the agent's X-Peerserve-Error, None from a model server)

Errors are chosen by the agent's machine-readable code, not by the wording of its message.
"""

from __future__ import annotations


class PeerserveError(Exception):
    """Base class of the client's errors."""


class UnknownModelError(PeerserveError):
    pass


class NoCapacityError(PeerserveError):
    pass


class NotReadyError(PeerserveError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClusterUnreachableError(PeerserveError):
    pass


class RequestError(PeerserveError):
    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
