"""The client's one core: every operation written once, as a generator of I/O requests (sans-IO).

An operation yields ``Call`` (one HTTP request) or ``Browse`` (an mDNS browse) and receives the result
(an ``httpx.Response``, or the ``httpx.HTTPError`` it raised; the agent URLs found). It holds every
decision: failover order across agents, RTT aggregation, which targets to try in which order, and
error mapping by the agents' machine-readable ``X-Peerserve-Error`` code. client/core.py drives these
generators with httpx.Client (sync) or httpx.AsyncClient (async); nothing else differs between the two.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from client.errors import (
    ClusterUnreachableError,
    NoCapacityError,
    NotReadyError,
    PeerserveError,
    RequestError,
    UnknownModelError,
)

RTT_HEADER = "X-Peerserve-RTT"
CLIENT_HEADER = "X-Peerserve-Client"
ERROR_HEADER = "X-Peerserve-Error"
RTT_PROBES = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request for the shell to make."""

    method: str
    url: str
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None


@dataclass(frozen=True)
class Browse:
    """Find agents by mDNS (the shell answers with a list of agent URLs)."""

    interfaces: tuple[str, ...] | None


Result = httpx.Response | httpx.HTTPError | list[str]
Op = Generator[Call | Browse, Result, T]


@dataclass(frozen=True)
class Endpoint:
    """Where a model is served: its server's base URL, the node, and why it was chosen."""

    model: str
    node: str
    url: str
    why: Mapping[str, Any] = field(default_factory=dict)
    alternatives: tuple[Endpoint, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Endpoint:
        alts = tuple(cls.from_json(a) for a in data.get("alternatives", []))
        return cls(str(data["model"]), str(data["node"]), str(data["url"]), dict(data.get("why", {})), alts)


def default_client_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def error_for(response: httpx.Response) -> PeerserveError | None:
    """The typed error an answer means (None for success): by X-Peerserve-Error code, else by status."""
    status = response.status_code
    if status < 400:
        return None
    try:
        body = response.json()
        message = str(body.get("error", response.text)) if isinstance(body, dict) else response.text[:300]
    except ValueError:
        message = response.text[:300]
    code = response.headers.get(ERROR_HEADER)
    if code == "unknown_model":
        return UnknownModelError(message)
    if code == "no_capacity" or (code is None and status == 507):
        return NoCapacityError(message)
    if code == "provisioning" or (code is None and status == 503):
        return NotReadyError(message, float(response.headers.get("retry-after", "1") or 1))
    return RequestError(message, status, code)


def fails_over(status: int) -> bool:
    """Whether an agent's answer means "ask the next agent" (it is broken, not the request)."""
    return status >= 500 and status not in (503, 507)


def aggregate_rtts(samples: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Per node, the median of its probe round trips (ms); nodes without a sample are left out."""
    return {node: statistics.median(s) for node, s in samples.items() if s}


def targets(chosen: Endpoint) -> list[str]:
    """Servers to try for a direct request: the best, then its first alternative."""
    return [chosen.url, *(a.url for a in chosen.alternatives[:1])]


def predict_body(instances: Any, inputs: Any) -> dict[str, Any]:
    if (instances is None) == (inputs is None):
        raise ValueError("pass exactly one of instances= or inputs=")
    return {"instances": instances} if instances is not None else {"inputs": inputs}


class ClientCore:
    """What a client knows (agents, nodes, RTTs) and the operations on it."""

    def __init__(
        self,
        agents: Sequence[str] | None,
        client_id: str | None,
        discover_interfaces: list[str] | None,
        rtt_ttl_s: float,
        rtt_override: Mapping[str, float] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ.get("PEERSERVE_AGENT", "")
        self.agents = [a.rstrip("/") for a in (agents or [u for u in env.split(",") if u])]
        self.client_id = client_id or os.environ.get("PEERSERVE_CLIENT") or default_client_id()
        self.interfaces = discover_interfaces
        self.rtt_ttl_s = rtt_ttl_s
        self.rtt_override = dict(rtt_override or {})
        self.clock = clock
        self.rtts: dict[str, float] = {}
        self.rtt_at = -1e18
        self.nodes: dict[str, str] = {}  # node id -> agent URL, from /cluster
        self.token = os.environ.get("PEERSERVE_CLIENT_TOKEN", "")  # for agents run with --client-token

    # -- pure state changes --------------------------------------------------------------------------
    def promote(self, agent: str) -> None:
        """Remember a working agent first; keep the others for failover."""
        if agent in self.agents:
            self.agents.remove(agent)
        self.agents.insert(0, agent)

    def learn(self, cluster: Mapping[str, Any]) -> None:
        for m in cluster.get("members", []):
            if m.get("status") == "alive":
                self.nodes[str(m["node_id"])] = str(m["api_url"])
                if m["api_url"] not in self.agents:
                    self.agents.append(str(m["api_url"]))

    def headers(self) -> dict[str, str]:
        rtts = {**self.rtts, **self.rtt_override}
        h = {CLIENT_HEADER: self.client_id}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if rtts:
            h[RTT_HEADER] = ", ".join(f"{n}={v:.3f}" for n, v in sorted(rtts.items()))
        return h

    # -- operations (generators) ---------------------------------------------------------------------
    def ordered_agents(self) -> Op[list[str]]:
        if not self.agents:
            found = yield Browse(tuple(self.interfaces) if self.interfaces else None)
            assert isinstance(found, list)
            self.agents = list(found)
            if not self.agents:
                raise ClusterUnreachableError("no peerserve agent found by mDNS; pass agents=[...] or --agent URL")
        return list(self.agents)

    def call_any(self, method: str, path: str, json: Any = None) -> Op[httpx.Response]:
        """The first answer from any agent (failing over on connection errors, timeouts and 5xx)."""
        last: Exception | None = None
        for agent in (yield from self.ordered_agents()):
            r = yield Call(method, agent + path, json, self.headers())
            if isinstance(r, httpx.HTTPError):
                last = r
                continue
            assert isinstance(r, httpx.Response)
            if fails_over(r.status_code):
                last = RequestError(r.text[:200], r.status_code, r.headers.get(ERROR_HEADER))
                continue
            self.promote(agent)
            return r
        raise ClusterUnreachableError(f"no agent answered {path}: {last}")

    def checked(self, method: str, path: str, json: Any = None) -> Op[Any]:
        r = yield from self.call_any(method, path, json)
        error = error_for(r)
        if error is not None:
            raise error
        return r.json()

    def cluster(self) -> Op[dict[str, Any]]:
        data = yield from self.checked("GET", "/cluster")
        return dict(data)

    def measure_rtts(self, force: bool = False) -> Op[dict[str, float]]:
        """RTT (ms) to each alive node: median of three small requests; cached for rtt_ttl_s."""
        if not force and self.clock() - self.rtt_at < self.rtt_ttl_s:
            return dict(self.rtts)
        self.learn((yield from self.cluster()))
        samples: dict[str, list[float]] = {}
        for node, url in self.nodes.items():
            for _ in range(RTT_PROBES):
                started = time.perf_counter()
                r = yield Call("GET", url + "/health", timeout=1.0)
                if isinstance(r, httpx.HTTPError):
                    break
                samples.setdefault(node, []).append(1000 * (time.perf_counter() - started))
        self.rtts, self.rtt_at = aggregate_rtts(samples), self.clock()
        return dict(self.rtts)

    def endpoints(self) -> Op[list[Endpoint]]:
        yield from self.measure_rtts()
        data = yield from self.checked("GET", "/services")
        return [Endpoint.from_json(e) for e in data]

    def endpoint(self, model: str) -> Op[Endpoint]:
        yield from self.measure_rtts()
        return Endpoint.from_json((yield from self.checked("GET", f"/services/{model}")))

    def send(self, model: str, path: str, body: Any, via_proxy: bool) -> Op[Any]:
        """``body`` to ``path`` of the model's best server (then one alternative), else through an agent."""
        if not via_proxy:
            chosen = yield from self.endpoint(model)
            for url in targets(chosen):
                r = yield Call("POST", url + path, body)
                if isinstance(r, httpx.HTTPError):
                    continue
                assert isinstance(r, httpx.Response)
                error = error_for(r)
                if error is not None:
                    raise error
                return r.json()
        return (yield from self.checked("POST", f"/services/{model}{path}", body))

    def predict(self, model: str, instances: Any, inputs: Any, via_proxy: bool) -> Op[Any]:
        """TF-Serving REST predict."""
        return (yield from self.send(model, f"/v1/models/{model}:predict", predict_body(instances, inputs), via_proxy))

    def infer(self, model: str, inputs: Sequence[Mapping[str, Any]], via_proxy: bool) -> Op[Any]:
        """Open Inference Protocol infer (JSON tensors: ``[{"name", "shape", "datatype", "data"}]``)."""
        return (yield from self.send(model, f"/v2/models/{model}/infer", {"inputs": list(inputs)}, via_proxy))
