"""The peerserve client library, sync (``Client``) and async (``AsyncClient``); httpx and zeroconf only.

    from client import Client
    with Client() as c:                        # agents found by mDNS (or Client(agents=[url, ...]))
        c.endpoint("half_plus_two").url       # best TF-Serving endpoint for this client
        c.predict("half_plus_two", instances=[1.0, 2.0, 5.0])   # -> {"predictions": [2.5, 3.0, 4.5]}

Queries go to any agent and fail over to the next on error or timeout. The client measures its RTT to
the nodes it learns of (cheap: one small request each, cached for ``rtt_ttl_s``) and reports them with
every query (``X-Peerserve-RTT``), so the leader's placement sees real client latencies.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from client.errors import (
    ClusterUnreachableError,
    NoCapacityError,
    NotReadyError,
    RequestError,
    UnknownModelError,
)

RTT_HEADER = "X-Peerserve-RTT"
CLIENT_HEADER = "X-Peerserve-Client"


@dataclass(frozen=True)
class Endpoint:
    """Where a model is served: its TF-Serving REST base URL, the node, and why it was chosen."""

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


def raise_for(response: httpx.Response) -> None:
    """Map an agent's JSON error to the client's typed errors."""
    if response.status_code < 400:
        return
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text[:300]
    status = response.status_code
    if status == 404 and "catalogue" in message:
        raise UnknownModelError(message)
    if status == 507:
        raise NoCapacityError(message)
    if status == 503:
        raise NotReadyError(message, float(response.headers.get("retry-after", "1") or 1))
    raise RequestError(message, status)


class _Base:
    def __init__(
        self,
        agents: Sequence[str] | None,
        client_id: str | None,
        timeout: float,
        discover_interfaces: list[str] | None,
        rtt_ttl_s: float,
        rtt_override: Mapping[str, float] | None,
    ) -> None:
        env = os.environ.get("PEERSERVE_AGENT", "")
        self.agents = [a.rstrip("/") for a in (agents or [u for u in env.split(",") if u])]
        self.client_id = client_id or os.environ.get("PEERSERVE_CLIENT") or default_client_id()
        self.timeout = timeout
        self.interfaces = discover_interfaces
        self.rtt_ttl_s = rtt_ttl_s
        self.rtt_override = dict(rtt_override or {})
        self._rtts: dict[str, float] = {}
        self._rtt_at = -1e18
        self._nodes: dict[str, str] = {}  # node id -> agent URL, from /cluster
        self.token = os.environ.get("PEERSERVE_CLIENT_TOKEN", "")  # for agents run with --client-token

    def _ordered_agents(self) -> list[str]:
        if not self.agents:
            from client.discovery import browse

            self.agents = browse(interfaces=self.interfaces)
            if not self.agents:
                raise ClusterUnreachableError("no peerserve agent found by mDNS; pass agents=[...] or --agent URL")
        return list(self.agents)

    def _promote(self, agent: str) -> None:
        """Remember a working agent first; keep the others for failover."""
        if agent in self.agents:
            self.agents.remove(agent)
        self.agents.insert(0, agent)

    def _learn(self, cluster: Mapping[str, Any]) -> None:
        for m in cluster.get("members", []):
            if m.get("status") == "alive":
                self._nodes[str(m["node_id"])] = str(m["api_url"])
                if m["api_url"] not in self.agents:
                    self.agents.append(str(m["api_url"]))

    def headers(self) -> dict[str, str]:
        rtts = {**self._rtts, **self.rtt_override}
        h = {CLIENT_HEADER: self.client_id}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if rtts:
            h[RTT_HEADER] = ", ".join(f"{n}={v:.3f}" for n, v in sorted(rtts.items()))
        return h

    @staticmethod
    def _predict_body(instances: Any, inputs: Any) -> dict[str, Any]:
        if (instances is None) == (inputs is None):
            raise ValueError("pass exactly one of instances= or inputs=")
        return {"instances": instances} if instances is not None else {"inputs": inputs}


class Client(_Base):
    """Synchronous client."""

    def __init__(
        self,
        agents: Sequence[str] | None = None,
        client_id: str | None = None,
        timeout: float = 5.0,
        discover_interfaces: list[str] | None = None,
        rtt_ttl_s: float = 60.0,
        rtt_override: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(agents, client_id, timeout, discover_interfaces, rtt_ttl_s, rtt_override)
        self.http = httpx.Client(timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The first answer from any agent (failing over on connection errors, timeouts and 5xx)."""
        last: Exception | None = None
        for agent in self._ordered_agents():
            try:
                r = self.http.request(method, agent + path, headers=self.headers(), **kwargs)
            except httpx.HTTPError as exc:
                last = exc
                continue
            if r.status_code >= 500 and r.status_code not in (503, 507):
                last = RequestError(r.text[:200], r.status_code)
                continue
            self._promote(agent)
            return r
        raise ClusterUnreachableError(f"no agent answered {path}: {last}")

    def measure_rtts(self, force: bool = False) -> dict[str, float]:
        """RTT (ms) to each alive node: median of three small requests; cached for rtt_ttl_s."""
        if not force and time.monotonic() - self._rtt_at < self.rtt_ttl_s:
            return dict(self._rtts)
        self._learn(self.cluster())
        out = {}
        for node, url in self._nodes.items():
            samples = []
            for _ in range(3):
                started = time.perf_counter()
                try:
                    self.http.get(url + "/health", timeout=1.0)
                except httpx.HTTPError:
                    break
                samples.append(1000 * (time.perf_counter() - started))
            if samples:
                out[node] = statistics.median(samples)
        self._rtts, self._rtt_at = out, time.monotonic()
        return dict(out)

    def cluster(self) -> dict[str, Any]:
        r = self._call("GET", "/cluster")
        raise_for(r)
        data: dict[str, Any] = r.json()
        return data

    def endpoints(self) -> list[Endpoint]:
        self.measure_rtts()
        r = self._call("GET", "/services")
        raise_for(r)
        return [Endpoint.from_json(e) for e in r.json()]

    def endpoint(self, model: str) -> Endpoint:
        self.measure_rtts()
        r = self._call("GET", f"/services/{model}")
        raise_for(r)
        return Endpoint.from_json(r.json())

    def predict(self, model: str, instances: Any = None, inputs: Any = None, via_proxy: bool = False) -> Any:
        """TF-Serving predict; direct to the best endpoint, retrying once elsewhere if it is dead."""
        body = self._predict_body(instances, inputs)
        path = f"/v1/models/{model}:predict"
        if via_proxy:
            r = self._call("POST", f"/services/{model}{path}", json=body)
            raise_for(r)
            return r.json()
        chosen = self.endpoint(model)
        for target in (chosen, *chosen.alternatives[:1]):
            try:
                r = self.http.post(target.url + path, json=body)
            except httpx.HTTPError:
                continue
            raise_for(r)
            return r.json()
        r = self._call("POST", f"/services/{model}{path}", json=body)  # last resort: through an agent
        raise_for(r)
        return r.json()


class AsyncClient(_Base):
    """Asynchronous client (the same methods, awaitable)."""

    def __init__(
        self,
        agents: Sequence[str] | None = None,
        client_id: str | None = None,
        timeout: float = 5.0,
        discover_interfaces: list[str] | None = None,
        rtt_ttl_s: float = 60.0,
        rtt_override: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(agents, client_id, timeout, discover_interfaces, rtt_ttl_s, rtt_override)
        self.http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        last: Exception | None = None
        for agent in self._ordered_agents():
            try:
                r = await self.http.request(method, agent + path, headers=self.headers(), **kwargs)
            except httpx.HTTPError as exc:
                last = exc
                continue
            if r.status_code >= 500 and r.status_code not in (503, 507):
                last = RequestError(r.text[:200], r.status_code)
                continue
            self._promote(agent)
            return r
        raise ClusterUnreachableError(f"no agent answered {path}: {last}")

    async def measure_rtts(self, force: bool = False) -> dict[str, float]:
        if not force and time.monotonic() - self._rtt_at < self.rtt_ttl_s:
            return dict(self._rtts)
        self._learn(await self.cluster())
        out = {}
        for node, url in self._nodes.items():
            samples = []
            for _ in range(3):
                started = time.perf_counter()
                try:
                    await self.http.get(url + "/health", timeout=1.0)
                except httpx.HTTPError:
                    break
                samples.append(1000 * (time.perf_counter() - started))
            if samples:
                out[node] = statistics.median(samples)
        self._rtts, self._rtt_at = out, time.monotonic()
        return dict(out)

    async def cluster(self) -> dict[str, Any]:
        r = await self._call("GET", "/cluster")
        raise_for(r)
        data: dict[str, Any] = r.json()
        return data

    async def endpoints(self) -> list[Endpoint]:
        await self.measure_rtts()
        r = await self._call("GET", "/services")
        raise_for(r)
        return [Endpoint.from_json(e) for e in r.json()]

    async def endpoint(self, model: str) -> Endpoint:
        await self.measure_rtts()
        r = await self._call("GET", f"/services/{model}")
        raise_for(r)
        return Endpoint.from_json(r.json())

    async def predict(self, model: str, instances: Any = None, inputs: Any = None, via_proxy: bool = False) -> Any:
        body = self._predict_body(instances, inputs)
        path = f"/v1/models/{model}:predict"
        if not via_proxy:
            chosen = await self.endpoint(model)
            for target in (chosen, *chosen.alternatives[:1]):
                try:
                    r = await self.http.post(target.url + path, json=body)
                except httpx.HTTPError:
                    continue
                raise_for(r)
                return r.json()
        r = await self._call("POST", f"/services/{model}{path}", json=body)
        raise_for(r)
        return r.json()
