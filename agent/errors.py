"""Errors of the node agent.

    AgentError                     base
    ├── ConfigError                a settings value or the catalogue file is wrong (our user's input)
    ├── StateError                 a state file in the data dir cannot be used (a damaged database or node key)
    ├── RuntimeUnavailable         the runtime cannot be reached (Docker daemon down)
    ├── InstanceStartError         a model server failed to start (image missing, crashed, not ready)
    └── PeerError                  another agent misbehaved (bad answer, timeout); never our bug

HTTP handlers map these to 4xx/5xx JSON answers; the agent itself never crashes on them.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class of the agent's errors."""


class ConfigError(AgentError, ValueError):
    """A setting or the catalogue is invalid; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.source = ""  # where the value came from, when not where an operator looks (load_settings: a variable)

    def with_source(self) -> str:
        """The message, and where the value came from if ``source`` says (what the agent prints as it refuses)."""
        return f"{self} [{self.source}]" if self.source else str(self)


class StateError(AgentError, ValueError):
    """A file the agent keeps in its data dir cannot be used (a damaged peerserve.sqlite3, an empty or torn
    peer/node.key): the agent refuses to start, naming the file and what moving it aside costs, rather than replace
    it by itself (the database holds the election's term and vote, the key the identity its peers pinned)."""


class RuntimeUnavailable(AgentError):
    """The runtime (e.g. the Docker Engine) cannot be reached."""


class InstanceStartError(AgentError):
    """A model server did not start or did not become ready."""


class PeerError(AgentError):
    """A peer agent answered wrongly or not at all."""
