"""The runtime interface: start, stop and list model servers; readiness from TF-Serving's REST status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from agent.catalogue import ModelSpec


@dataclass(frozen=True)
class Instance:
    """A model server this node manages. ``running`` is the runtime's view; readiness is probed."""

    id: str
    model: str
    url: str
    running: bool
    term: int
    started_at: float
    detail: str = ""
    mem_mb: float | None = None  # measured resident memory of the server (its process tree), if known
    # created with other settings than the runtime would use now (an upgrade): replaced make-before-break
    outdated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "url": self.url,
            "running": self.running,
            "term": self.term,
            "started_at": self.started_at,
            "detail": self.detail,
            "mem_mb": self.mem_mb,
        }


class Runtime(Protocol):
    """What the agent needs from a runtime. All methods may raise RuntimeUnavailable."""

    kind: str

    async def start(self, spec: ModelSpec, term: int) -> Instance:
        """Start one server for ``spec``; raises InstanceStartError with the reason."""
        ...

    async def stop(self, instance_id: str) -> None:
        """Stop and remove one server; stopping an unknown id is not an error."""
        ...

    async def list(self) -> list[Instance]:
        """Every server this node manages, including ones adopted after a restart."""
        ...

    async def close(self) -> None:
        """Release resources at agent shutdown (ProcessRuntime stops the servers it owns)."""
        ...


async def probe_available(
    client: httpx.AsyncClient, url: str, model: str, timeout: float = 2.0, server: str = "tfserving"
) -> bool:
    """Whether the server at ``url`` can serve ``model``: TF-Serving reports a version AVAILABLE, or
    Triton answers 200 to ``/v2/health/ready`` and ``/v2/models/{model}/ready``."""
    try:
        if server == "triton":
            ready = await client.get(f"{url}/v2/health/ready", timeout=timeout)
            model_ready = await client.get(f"{url}/v2/models/{model}/ready", timeout=timeout)
            return ready.status_code == 200 and model_ready.status_code == 200
        response = await client.get(f"{url}/v1/models/{model}", timeout=timeout)
        if response.status_code != 200:
            return False
        statuses = response.json().get("model_version_status", [])
        return any(isinstance(s, dict) and s.get("state") == "AVAILABLE" for s in statuses)
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
