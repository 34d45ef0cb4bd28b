"""Errors the client raises.

PeerserveError                  base
├── UnknownModelError           no such model in the cluster's catalogue (404)
├── NoCapacityError             the model fits on no node (507)
├── NotReadyError               the model is being provisioned, or the agent is stopping; retry after
                                ``retry_after`` s (503)
├── ClusterUnreachableError     no agent answered
├── AnswerTooLarge              an inference answer over the client's ``max_answer_bytes`` / ``max_answer_values``
                                (raised at once: asked elsewhere, the model would run again to answer as much)
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


class AnswerTooLarge(PeerserveError):
    """A model's answer over a bound the client was given (``what``: "bytes" or "values", ``bound``); the
    request ran. Not failed over: another server (or an agent's proxy) would run the model again for an
    answer as large (review 12c: YOLOv5's 16 MiB output ran on 2 + N servers, then ClusterUnreachableError).
    A client expecting such answers raises the bound: ``Client(max_answer_bytes=..., max_answer_values=...)``,
    ``peerserve predict --max-answer-mb / --max-answer-values``."""

    def __init__(self, message: str, what: str, bound: int) -> None:
        super().__init__(message)
        self.what = what
        self.bound = bound


class RequestError(PeerserveError):
    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
