"""The solver's input: nodes, models and requests, parsed and validated from JSON-shaped dicts.

Units: milliseconds and megabytes. Compute is in abstract units (a node's capacity against a model
instance's need), as in the thesis's formulation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from solver.errors import SnapshotError

OBJECTIVES = ("queue", "queue-p99", "thesis")


@dataclass(frozen=True)
class InstanceUsage:
    """Request statistics of one model's instances on one node (for Mode 1 eviction)."""

    requests: int = 0
    last_request_s: float | None = None
    provisioned_s: float | None = None


@dataclass(frozen=True)
class Node:
    """One edge board: its memory, compute capacity and the model instances it runs now."""

    id: str
    mem_available_mb: float
    mem_total_mb: float
    compute: float
    instances: Mapping[str, int] = field(default_factory=dict)
    usage: Mapping[str, InstanceUsage] = field(default_factory=dict)
    node_class: str = "default"
    cores: float | None = None  # parallel compute (CPU cores, GPU streams) its instances share; None: no limit
    concurrency: float | None = None  # requests one instance serves at once (its server's threads); None: 1


@dataclass(frozen=True)
class Model:
    """A servable model: memory and compute one instance needs."""

    name: str
    mem_mb: float
    compute: float
    throughput_rps: Mapping[str, float] = field(default_factory=dict)  # node id or "default" -> req/s per instance


@dataclass(frozen=True)
class Request:
    """A request (stream) for a model: round trip and execution time to each node."""

    model: str
    rtt_ms: Mapping[str, float]
    exec_ms: Mapping[str, float]
    client: str | None = None
    rate: float | None = None  # requests/s of the stream over the window (queue objective; 1 when absent)


@dataclass(frozen=True)
class Snapshot:
    """Everything the solver sees; ``now_s`` is the clock for eviction (seconds, any epoch)."""

    nodes: tuple[Node, ...]
    models: tuple[Model, ...]
    requests: tuple[Request, ...]
    now_s: float | None = None
    objective: str | None = None  # "queue" or "thesis"; None: the caller's choice

    def __post_init__(self) -> None:
        validate(self)

    @property
    def node_ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as the JSON file format that ``from_dict`` reads."""
        out: dict[str, Any] = {
            "nodes": [_node_to_dict(n) for n in self.nodes],
            "models": [_model_to_dict(m) for m in self.models],
            "requests": [_request_to_dict(r) for r in self.requests],
        }
        if self.now_s is not None:
            out["now_s"] = self.now_s
        if self.objective is not None:
            out["objective"] = self.objective
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        """Parse the JSON snapshot format; raises SnapshotError naming the first bad field."""
        if not isinstance(data, Mapping):
            raise SnapshotError("$", "a snapshot is a JSON object with nodes, models and requests")
        nodes = tuple(_parse_node(d, f"nodes[{i}]") for i, d in enumerate(_list(data, "nodes")))
        models = tuple(_parse_model(d, f"models[{i}]") for i, d in enumerate(_list(data, "models")))
        requests = tuple(_parse_request(d, f"requests[{i}]") for i, d in enumerate(_list(data, "requests", empty=True)))
        now = data.get("now_s")
        now_s = None if now is None else _number(now, "now_s", allow_negative=True)
        objective = data.get("objective")
        if objective is not None and objective not in OBJECTIVES:
            raise SnapshotError("objective", f"must be one of {', '.join(OBJECTIVES)}")
        return cls(nodes=nodes, models=models, requests=requests, now_s=now_s, objective=objective)


def validate(s: Snapshot) -> None:
    """Check cross-references: unique ids, known models, an RTT and execution time for every node."""
    if not s.nodes:
        raise SnapshotError("nodes", "at least one node is required")
    if not s.models:
        raise SnapshotError("models", "at least one model is required")
    _unique([n.id for n in s.nodes], "nodes", "id")
    _unique([m.name for m in s.models], "models", "name")
    known = {m.name for m in s.models}
    ids = [n.id for n in s.nodes]
    for i, n in enumerate(s.nodes):
        for name in n.instances:
            if name not in known:
                raise SnapshotError(f"nodes[{i}].instances.{name}", "unknown model (not in models)")
        if n.mem_available_mb > n.mem_total_mb:
            raise SnapshotError(f"nodes[{i}].mem_available_mb", "exceeds mem_total_mb")
    for i, m in enumerate(s.models):
        for key, value in m.throughput_rps.items():
            if key != "default" and key not in set(ids):
                raise SnapshotError(f"models[{i}].throughput_rps.{key}", "unknown node (not in nodes, nor 'default')")
            if not value > 0:
                raise SnapshotError(f"models[{i}].throughput_rps.{key}", "must be positive")
    for i, r in enumerate(s.requests):
        if r.model not in known:
            raise SnapshotError(f"requests[{i}].model", f"unknown model {r.model!r} (not in models)")
        for key, table in (("rtt_ms", r.rtt_ms), ("exec_ms", r.exec_ms)):
            missing = [n for n in ids if n not in table]
            if missing:
                raise SnapshotError(f"requests[{i}].{key}", f"missing a value for node {missing[0]!r}")
            extra = [n for n in table if n not in set(ids)]
            if extra:
                raise SnapshotError(f"requests[{i}].{key}.{extra[0]}", "unknown node (not in nodes)")


def _unique(values: Sequence[str], where: str, key: str) -> None:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise SnapshotError(f"{where}[{i}].{key}", f"duplicate {key} {v!r}")
        seen.add(v)


def _list(data: Mapping[str, Any], key: str, empty: bool = False) -> list[Any]:
    value = data.get(key)
    if value is None:
        if empty:
            return []
        raise SnapshotError(key, "missing (a JSON list is required)")
    if not isinstance(value, list):
        raise SnapshotError(key, "must be a JSON list")
    return value


def _obj(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise SnapshotError(where, "must be a JSON object")
    return d


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise SnapshotError(f"{where}.{key}", "must be a non-empty string")
    return v


MAX_INT_NUMBER = 1e300  # a JSON integer past this is refused (a float has no room for 10**400)


def _number(v: Any, where: str, allow_negative: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SnapshotError(where, f"must be a number, got {type(v).__name__}")
    if isinstance(v, int) and abs(v) > MAX_INT_NUMBER:
        raise SnapshotError(where, f"must be at most {MAX_INT_NUMBER:g} in size")  # float() of it would overflow
    x = float(v)
    if math.isnan(x) or math.isinf(x):
        raise SnapshotError(where, "must be finite (NaN and infinity are not allowed)")
    if x < 0 and not allow_negative:
        raise SnapshotError(where, f"must not be negative, got {x:g}")
    return x


def _count(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise SnapshotError(where, "must be a non-negative integer")
    return v


def _num_map(d: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
    table = _obj(d.get(key), f"{where}.{key}")
    return {str(k): _number(v, f"{where}.{key}.{k}") for k, v in table.items()}


def _parse_node(raw: Any, where: str) -> Node:
    d = _obj(raw, where)
    instances_raw = _obj(d.get("instances", {}), f"{where}.instances")
    usage_raw = _obj(d.get("usage", {}), f"{where}.usage")
    usage = {}
    for name, u in usage_raw.items():
        uw = f"{where}.usage.{name}"
        ud = _obj(u, uw)
        last = ud.get("last_request_s")
        prov = ud.get("provisioned_s")
        usage[str(name)] = InstanceUsage(
            requests=_count(ud.get("requests", 0), f"{uw}.requests"),
            last_request_s=None if last is None else _number(last, f"{uw}.last_request_s", True),
            provisioned_s=None if prov is None else _number(prov, f"{uw}.provisioned_s", True),
        )
    for key in ("mem_available_mb", "mem_total_mb", "compute"):
        if key not in d:
            raise SnapshotError(f"{where}.{key}", "missing")
    return Node(
        id=_str(d, "id", where),
        mem_available_mb=_number(d["mem_available_mb"], f"{where}.mem_available_mb"),
        mem_total_mb=_number(d["mem_total_mb"], f"{where}.mem_total_mb"),
        compute=_number(d["compute"], f"{where}.compute"),
        instances={str(k): _count(v, f"{where}.instances.{k}") for k, v in instances_raw.items()},
        usage=usage,
        node_class=_str(d, "node_class", where) if "node_class" in d else "default",
        cores=_cores(d.get("cores"), f"{where}.cores"),
        concurrency=_concurrency(d.get("concurrency"), f"{where}.concurrency"),
    )


MIN_CORES, MAX_CORES = 1 / 64, 4096.0  # a node's parallel capacity (1e-300 divided by zero in repair)


def _cores(v: Any, where: str) -> float | None:
    """A node's parallel capacity: absent (null) or a number in [MIN_CORES, MAX_CORES]."""
    return _optional_within(v, where, MIN_CORES, MAX_CORES, "no limit")


def _optional_within(v: Any, where: str, lo: float, hi: float, absent: str) -> float | None:
    """An optional number: absent (null) or within [lo, hi]; ``absent`` says what its absence means."""
    if v is None:
        return None
    x = _number(v, where)
    if not lo <= x <= hi:
        raise SnapshotError(where, f"must be within {lo:g}-{hi:g} (or absent: {absent})")
    return x


MIN_CONCURRENCY, MAX_CONCURRENCY = 1.0, 1024.0  # requests one instance serves at once


def _concurrency(v: Any, where: str) -> float | None:
    """Requests one of the node's instances serves at once: absent (null: 1) or a number in [1, 1024]."""
    return _optional_within(v, where, MIN_CONCURRENCY, MAX_CONCURRENCY, "1")


def _parse_model(raw: Any, where: str) -> Model:
    d = _obj(raw, where)
    for key in ("mem_mb", "compute"):
        if key not in d:
            raise SnapshotError(f"{where}.{key}", "missing")
    return Model(
        name=_str(d, "name", where),
        mem_mb=_number(d["mem_mb"], f"{where}.mem_mb"),
        compute=_number(d["compute"], f"{where}.compute"),
        throughput_rps=_num_map(d, "throughput_rps", where) if "throughput_rps" in d else {},
    )


def _parse_request(raw: Any, where: str) -> Request:
    d = _obj(raw, where)
    client = d.get("client")
    if client is not None and not isinstance(client, str):
        raise SnapshotError(f"{where}.client", "must be a string")
    return Request(
        model=_str(d, "model", where),
        rtt_ms=_num_map(d, "rtt_ms", where),
        exec_ms=_num_map(d, "exec_ms", where),
        client=client,
        rate=_number(d["rate"], f"{where}.rate") if d.get("rate") is not None else None,
    )


def _node_to_dict(n: Node) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": n.id,
        "mem_available_mb": n.mem_available_mb,
        "mem_total_mb": n.mem_total_mb,
        "compute": n.compute,
        "instances": dict(n.instances),
    }
    if n.node_class != "default":
        out["node_class"] = n.node_class
    if n.cores is not None:
        out["cores"] = n.cores
    if n.concurrency is not None:
        out["concurrency"] = n.concurrency
    if n.usage:
        out["usage"] = {
            k: {"requests": u.requests, "last_request_s": u.last_request_s, "provisioned_s": u.provisioned_s}
            for k, u in n.usage.items()
        }
    return out


def _request_to_dict(r: Request) -> dict[str, Any]:
    out: dict[str, Any] = {"model": r.model, "rtt_ms": dict(r.rtt_ms), "exec_ms": dict(r.exec_ms)}
    if r.client is not None:
        out["client"] = r.client
    if r.rate is not None:
        out["rate"] = r.rate
    return out


def _model_to_dict(m: Model) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m.name, "mem_mb": m.mem_mb, "compute": m.compute}
    if m.throughput_rps:
        out["throughput_rps"] = dict(m.throughput_rps)
    return out
