"""The peer-plane wire protocol: every message between agents, one typed codec each, routes and headers.

Each message is a frozen dataclass with ``to_json()`` (the one encoder) and ``parse(data, ...)`` (the one
strict parser). Parsers accept only bounded input: integers in range (no bools), finite floats, strings and
lists of bounded length, known model names; anything else raises ``WireError`` (a 4xx at the HTTP edge,
never a 500). The authenticated envelope's canonical bytes live here too (``request_signing_bytes``,
``response_signing_bytes``); keys and signatures are agent.identity's business. No third-party imports:
agent and client can both use this module.

    WireError(ValueError)      malformed or out-of-range message (status 400, or 413 when too large)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator_election import Announce, Message, Vote, VoteRequest
from peerserve import names

# -- routes and headers (the peer listener; client paths are agent.api's) --------------------------------
ROUTE_STATE = "/peer/state"  # GET: heartbeat; answer PeerState
ROUTE_LEAVE = "/peer/leave"  # POST Leave: the sender leaves
ROUTE_ELECTION = "/election/message"  # POST ElectionPost
ROUTE_DESIRED = "/control/desired"  # PUT DesiredCommand (leader -> agent)
ROUTE_STATS_NODE = "/stats/node"  # GET: NodeStats
ROUTE_STATS_MODELS = "/stats/models"  # GET: ModelStats
ROUTE_STATS_REQUESTS = "/stats/requests"  # GET ?since=&limit=: RequestPage
ROUTE_SWIM = "/peer/swim"  # POST SwimMessage (ping, gossip, ping_req, sync); answer SwimMessage (ack, sync)
# GET ?stamp=&offset=: a page of the operator's revocation list in force (operator-CA mode; agent/revocation_sync.py)
ROUTE_REVOCATIONS = "/peer/revocations"
ROUTES = (ROUTE_STATE, ROUTE_LEAVE, ROUTE_ELECTION, ROUTE_DESIRED, ROUTE_STATS_NODE, ROUTE_STATS_MODELS,
          ROUTE_STATS_REQUESTS, ROUTE_SWIM)  # fmt: skip

H_CARD = "x-peerserve-card"  # the sender's certified key (agent.identity.Card, base64url)
H_TO = "x-peerserve-to"  # node id of the receiver
H_TIME = "x-peerserve-time"  # sender's unix time, seconds with milliseconds
H_NONCE = "x-peerserve-nonce"  # 16 random bytes, base64url; the answer is bound to it
H_SIGNATURE = "x-peerserve-signature"  # Ed25519 over the signing bytes, base64url
# v2 requests: the receiver's boot id as the sender knows it (BOOT_ID), or UNKNOWN_BOOT; absent: a v1 request
H_BOOT = "x-peerserve-boot"
BOOT_ID = re.compile(r"[0-9a-f]{32}")  # 16 random bytes an agent draws at every start, hex (agent.identity)
UNKNOWN_BOOT = "-"  # a v2 request to a receiver whose boot id the sender does not know yet (answered STALE_BOOT)
# the signed refusal of a v2 request naming another boot id than the receiver's current one: its body is
# {"error": ..., "boot_id": the receiver's}, signed and bound to the request's nonce like every answer
STALE_BOOT = 421

# -- bounds ------------------------------------------------------------------------------------------
MAX_BODY = 256 * 1024  # bytes of any peer message or answer
# characters of a node card (agent.identity.Card): 220 with the token card alone, up to 467 with an operator's board
# card appended (agent/operator_ca.py)
MAX_CARD = 512
MAX_TERM = 2**53  # terms and cursors stay exact in every JSON implementation
MAX_COUNT = 64  # instances of one model on one node (also bounded by the node's memory)
MAX_MODELS = 256
MAX_URLS = 16  # ready servers of one model on one node
MAX_INSTANCES = 512
MAX_PAGE = 5000  # request-log rows per page
MAX_RTTS = 64  # nodes in one request's RTT report
MAX_NUMBER = 1e12
NODE_ID = names.NODE_ID
MODEL = names.MODEL_NAME  # and no "..": valid_model (peerserve/names.py: what the catalogue and the client take)
LIST_DIGEST = re.compile(r"[0-9a-f]{32}")  # agent.operator_ca.list_digest
NODE_CLASS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a key of the catalogue's per-class figures


class WireError(ValueError):
    """A peer message that is malformed, out of range or too large (``status``: the HTTP answer)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- field readers -----------------------------------------------------------------------------------
def _obj(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise WireError(f"{what} is not a JSON object")
    return data


def _int(data: Mapping[str, Any], key: str, lo: int = 0, hi: int = MAX_TERM) -> int:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise WireError(f"{key!r} must be an integer in [{lo}, {hi}]")
    return v


def _float(data: Mapping[str, Any], key: str, optional: bool = False, default: float | None = None) -> Any:
    v = data.get(key, default)
    if v is None and optional:
        return None
    # compared, not converted: NaN fails, and an int past a float's range is refused rather than overflowing
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_NUMBER:
        raise WireError(f"{key!r} must be a finite number in [0, {MAX_NUMBER:g}]")
    return float(v)


def _str(data: Mapping[str, Any], key: str, limit: int = 64, optional: bool = False, default: str | None = None) -> Any:
    v = data.get(key, default)
    if v is None and optional:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise WireError(f"{key!r} must be a string of at most {limit} characters")
    return v


def _node_class(data: Mapping[str, Any]) -> str:
    v = data.get("node_class", "default")
    if not isinstance(v, str) or not NODE_CLASS.fullmatch(v):
        raise WireError("'node_class' must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return v


def _node(data: Mapping[str, Any], key: str, optional: bool = False) -> Any:
    v = data.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not NODE_ID.fullmatch(v):
        raise WireError(f"{key!r} must be a node id (one DNS label)")
    return v


def valid_model(name: Any) -> bool:
    """A model name as the catalogue allows it (peerserve/names.py: one path segment, no '..')."""
    return names.valid_model_name(name)


def _url(v: Any) -> str:
    """A member's API or a model server's base URL: no path, query, fragment or credentials (a client would
    follow them: peerserve/names.py)."""
    url = names.base_url(v)
    if url is None:
        raise WireError(f"a URL must be http(s)://HOST[:PORT], nothing more, at most {names.MAX_URL} characters")
    return url


def _counts(data: Any, key: str, hi: int = MAX_COUNT) -> dict[str, int]:
    raw = _obj(data, key)
    if len(raw) > MAX_MODELS:
        raise WireError(f"{key!r} names more than {MAX_MODELS} models")
    out = {}
    for model in raw:
        if not valid_model(model):
            raise WireError(f"{key!r}: invalid model name {str(model)[:80]!r}")
        out[model] = _int(raw, model, 0, hi)
    return out


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_signing_bytes(
    sender: str,
    receiver: str,
    method: str,
    target: str,
    body: bytes,
    timestamp: str,
    nonce: str,
    boot: str | None = None,
) -> bytes:
    """What a request's signature covers: who to whom, what, the body's digest, when, and a one-time nonce; with
    ``boot`` (a v2 request) also which run of the receiver it is for (its boot id, or UNKNOWN_BOOT): a request
    captured before the receiver restarted names a boot id it no longer has, and is refused whatever the clocks
    say (docs/security.md, "Boot ids"). The two contexts differ in their first line, so neither verifies as the
    other."""
    if boot is None:
        parts: tuple[str, ...] = ("peerserve-request-v1", sender, receiver)
    else:
        parts = ("peerserve-request-v2", sender, receiver, boot)
    parts += (method.upper(), target, body_digest(body), timestamp, nonce)
    return "\n".join(parts).encode()


def valid_boot(value: str) -> bool:
    """A boot id as a v2 request may name it: BOOT_ID, or UNKNOWN_BOOT."""
    return value == UNKNOWN_BOOT or BOOT_ID.fullmatch(value) is not None


def response_signing_bytes(
    responder: str, requester: str, status: int, nonce: str, body: bytes, timestamp: str
) -> bytes:
    """What an answer's signature covers: bound to the request's nonce, so an old answer cannot be replayed."""
    parts = ("peerserve-response-v1", responder, requester, str(status), nonce, body_digest(body), timestamp)
    return "\n".join(parts).encode()


# -- messages ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerState:
    """A node's heartbeat answer (GET /peer/state): who it is, where, what it serves, how loaded."""

    node_id: str
    api_url: str
    peer_port: int
    endpoints: Mapping[str, tuple[str, ...]]
    mem_available_mb: float
    mem_total_mb: float
    gpu_load: float | None
    cpu_load: float
    node_class: str
    compute: float
    term: int
    leader: str | None
    catalogue_version: str = ""
    started_at: float = 0.0
    priority: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)  # kept for old callers; always empty
    version: int = 0  # bumped by the node on a meaningful change (agent.discovery.swim gossips the number)
    incarnation: int = 0  # the node's SWIM incarnation (only the node itself raises it)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "api_url": self.api_url,
            "peer_port": self.peer_port,
            "endpoints": {m: list(u) for m, u in self.endpoints.items()},
            "mem_available_mb": self.mem_available_mb,
            "mem_total_mb": self.mem_total_mb,
            "gpu_load": self.gpu_load,
            "cpu_load": self.cpu_load,
            "node_class": self.node_class,
            "compute": self.compute,
            "term": self.term,
            "leader": self.leader,
            "catalogue_version": self.catalogue_version,
            "started_at": self.started_at,
            "priority": self.priority,
            "version": self.version,
            "incarnation": self.incarnation,
        }

    @classmethod
    def parse(cls, data: Any) -> PeerState:
        d = _obj(data, "heartbeat answer")
        raw = _obj(d.get("endpoints"), "endpoints")
        if len(raw) > MAX_MODELS:
            raise WireError(f"'endpoints' names more than {MAX_MODELS} models")
        endpoints: dict[str, tuple[str, ...]] = {}
        for model, urls in raw.items():
            if not valid_model(model) or not isinstance(urls, list) or len(urls) > MAX_URLS:
                raise WireError(f"endpoints of {str(model)[:80]!r} must be a list of at most {MAX_URLS} URLs")
            endpoints[model] = tuple(_url(u) for u in urls)
        return cls(
            node_id=_node(d, "node_id"),
            api_url=_url(d.get("api_url")),
            peer_port=_int(d, "peer_port", 1, 65535),
            endpoints=endpoints,
            mem_available_mb=_float(d, "mem_available_mb"),
            mem_total_mb=_float(d, "mem_total_mb"),
            gpu_load=_float(d, "gpu_load", optional=True),
            cpu_load=_float(d, "cpu_load"),
            node_class=_node_class(d),
            compute=_float(d, "compute"),
            term=_int(d, "term"),
            leader=_node(d, "leader", optional=True),
            catalogue_version=_str(d, "catalogue_version", default=""),
            started_at=_float(d, "started_at", default=0.0),
            priority=_int(d, "priority", -(2**31), 2**31) if "priority" in d else 0,
            version=_int(d, "version") if "version" in d else 0,
            incarnation=_int(d, "incarnation") if "incarnation" in d else 0,
        )


@dataclass(frozen=True)
class Leave:
    """POST /peer/leave: the sender stops (graceful); only a node may say it leaves."""

    node_id: str

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id}

    @classmethod
    def parse(cls, data: Any) -> Leave:
        return cls(_node(_obj(data, "leave"), "node_id"))


@dataclass(frozen=True)
class DesiredCommand:
    """PUT /control/desired: the leader's desired set for one node at its term."""

    term: int
    leader: str
    instances: Mapping[str, int]
    placement: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"term": self.term, "leader": self.leader, "instances": dict(self.instances),
                "placement": None if self.placement is None else dict(self.placement)}  # fmt: skip

    @classmethod
    def parse(cls, data: Any) -> DesiredCommand:
        d = _obj(data, "desired set")
        placement = _placement(d.get("placement"))
        return cls(_int(d, "term"), _node(d, "leader"), _counts(d.get("instances"), "instances"), placement)


SUMMARY_NUMBERS = ("objective_ms", "solve_ms", "at", "rejected")  # what /metrics reads of it (agent/telemetry.py)


# Actions in a summary: one per (node, model) whose count changes (solver/problem.py), so up to 256 members x 256
# models; but the shortest action, {"op":"stop","node":"a","model":"b","count":1} and its comma, is 47 bytes, so
# no more than 5,577 fit in a MAX_BODY command: this bound refuses nothing the body's bound lets through (a test
# checks it), and the readers (/cluster, the page, the CLI, /metrics) know the list is bounded.
MAX_ACTIONS = 5600
ACTION_OPS = ("start", "stop")  # solver.plan.Action's
MAX_PLACEMENT_NODES = 1024  # the gathered nodes of a round: at most SWIM's 256 members and the leader


def _actions(v: Any) -> None:
    """A summary's ``actions``: null (none) or a list of at most MAX_ACTIONS actions, each with the fields their
    readers show (review27a L2: ``[null]`` or ``[5]`` passed and the cluster page's render threw on every poll):
    ``op`` start or stop, ``node`` a node id, ``model`` a model name, ``count`` an integer in [0, MAX_INSTANCES]."""
    if v is None:
        return
    if not isinstance(v, list) or len(v) > MAX_ACTIONS:
        raise WireError(f"'placement.actions' must be a list of at most {MAX_ACTIONS} actions or null")
    for a in v:
        count = a.get("count") if isinstance(a, dict) else None
        if not (
            isinstance(a, dict)
            and a.get("op") in ACTION_OPS
            and names.valid_node_id(a.get("node"))
            and valid_model(a.get("model"))
            and isinstance(count, int)
            and not isinstance(count, bool)
            and 0 <= count <= MAX_INSTANCES
        ):
            raise WireError(
                "each of 'placement.actions' must be {op: start|stop, node: node id, model: model name, "
                f"count: 0..{MAX_INSTANCES}}}"
            )


def _placement(v: Any) -> dict[str, Any] | None:
    """The round summary a leader sends with a desired set (agent/leader_round.py ``_summary``). Each node keeps it
    as its last placement and shows it on /cluster and /metrics, so what those read is checked here (review26b F4:
    ``{"objective_ms": "x"}`` made every /metrics scrape of the node answer 500): the numbers /metrics reads are
    numbers, ``actions`` a list of actions and ``nodes`` of node ids (review27a L2: the cluster page threw on ``[null]``
    and ``"x"``), and no number anywhere in it is NaN or infinite (the JSON of /cluster refuses them:
    500). Its ``slots`` are checked where they are read (peerserve/dispatch.py ``node_slots``); the rest is shown as
    sent (its size is bounded by the body's, ``MAX_BODY``). An honest leader's summary has no non-finite number: its
    own /cluster, which shows the same summary, would answer 500 on one."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise WireError("'placement' must be an object or null")
    for key in SUMMARY_NUMBERS:
        x = v.get(key)
        # a huge int is refused too: float() of one past a float's range (the scrape's) raises OverflowError
        if x is not None and (
            isinstance(x, bool) or not isinstance(x, (int, float)) or not -MAX_NUMBER <= x <= MAX_NUMBER
        ):
            raise WireError(f"'placement.{key}' must be a number in [-{MAX_NUMBER:g}, {MAX_NUMBER:g}] or null")
    _actions(v.get("actions"))
    nodes = v.get("nodes")
    if nodes is not None and (
        not isinstance(nodes, list) or len(nodes) > MAX_PLACEMENT_NODES or not all(map(names.valid_node_id, nodes))
    ):
        raise WireError(f"'placement.nodes' must be a list of at most {MAX_PLACEMENT_NODES} node ids or null")
    try:  # what /cluster's JSON does (starlette: allow_nan=False), in C: 11-48 ms for 256 KiB of values, under the
        json.dumps(v, allow_nan=False)  # 80 ms its parse took; a Python walk of it took 88 ms
    except ValueError as exc:
        raise WireError("'placement' holds a number that is NaN or infinite") from exc
    except RecursionError as exc:  # the parser allowed it (its limit is the encoder's): not seen, but never a 500
        raise WireError("'placement' is nested too deeply") from exc
    return v


@dataclass(frozen=True)
class NodeStats:
    """GET /stats/node, as the leader consumes it: capacity, the queue model's figures and running instances
    (validated only: agent/placement.py bounds the figures)."""

    node_id: str
    node_class: str
    compute: float
    mem_available_mb: float
    mem_total_mb: float
    instances: tuple[tuple[str, bool, bool, bool], ...]  # (model, running, ready, draining)
    cores: float | None = None  # the parallel capacity its instances share
    concurrency: float | None = None  # requests one of its instances serves at once
    load_per_cpu: float | None = None  # runnable threads per CPU of its machine
    # per model: (requests, mean ms in the server) its own servers measured over the window (agent/serving/server_stats)
    service: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        instances = [{"model": m, "running": run, "ready": ready, "draining": draining}
                     for m, run, ready, draining in self.instances]  # fmt: skip
        figures = {"cores": self.cores, "concurrency": self.concurrency, "load_per_cpu": self.load_per_cpu}
        service = {m: {"requests": n, "service_ms": ms} for m, (n, ms) in self.service.items()}
        return {"node_id": self.node_id, "node_class": self.node_class, "compute": self.compute,
                "mem_available_mb": self.mem_available_mb, "mem_total_mb": self.mem_total_mb,
                "instances": instances, **{k: v for k, v in figures.items() if v is not None},
                **({"service": service} if service else {})}  # fmt: skip

    @classmethod
    def parse(cls, data: Any) -> NodeStats:
        d = _obj(data, "node stats")
        raw = d.get("instances")
        if not isinstance(raw, list) or len(raw) > MAX_INSTANCES:
            raise WireError(f"'instances' must be a list of at most {MAX_INSTANCES}")
        instances = []
        for item in raw:
            i = _obj(item, "instance")
            if not valid_model(i.get("model")) or not isinstance(i.get("running"), bool):
                raise WireError("an instance needs a model name and a boolean 'running'")
            instances.append((i["model"], i["running"], i.get("ready") is True, i.get("draining") is True))
        return cls(_node(d, "node_id"), _node_class(d), _float(d, "compute"),
                   _float(d, "mem_available_mb"), _float(d, "mem_total_mb"), tuple(instances),
                   _float(d, "cores", optional=True), _float(d, "concurrency", optional=True),
                   _float(d, "load_per_cpu", optional=True), _service(d.get("service")))  # fmt: skip


def _service(raw: Any) -> dict[str, tuple[float, float]]:
    """A node's own service figures (absent: none); at most MAX_MODELS, each a model's requests and mean ms."""
    if raw is None:
        return {}
    entries = _obj(raw, "service")
    if len(entries) > MAX_MODELS:
        raise WireError(f"'service' names more than {MAX_MODELS} models")
    out = {}
    for model, entry in entries.items():
        e = _obj(entry, "service entry")
        if not valid_model(model):
            raise WireError(f"bad service entry {str(model)[:80]!r}")
        out[model] = (_float(e, "requests"), _float(e, "service_ms"))
    return out


@dataclass(frozen=True)
class ModelStats:
    """GET /stats/models: per model, requests since provisioned and when the last one came."""

    node_id: str
    models: Mapping[str, Mapping[str, float | None]]

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "models": {m: dict(v) for m, v in self.models.items()}}

    @classmethod
    def parse(cls, data: Any) -> ModelStats:
        d = _obj(data, "model stats")
        raw = _obj(d.get("models"), "models")
        if len(raw) > MAX_MODELS:
            raise WireError(f"'models' names more than {MAX_MODELS} models")
        models: dict[str, dict[str, float | None]] = {}
        for model, entry in raw.items():
            e = _obj(entry, "model entry")
            if not valid_model(model) or len(e) > 16:
                raise WireError(f"bad model entry {str(model)[:80]!r}")
            models[model] = {str(k)[:64]: _float(e, k, optional=True) for k in e}
        return cls(_node(d, "node_id"), models)


@dataclass(frozen=True)
class RequestRow:
    """One row of a node's request log."""

    id: int
    ts: float
    model: str
    client: str
    rtt_ms: Mapping[str, float]
    node: str | None
    latency_ms: float | None
    status: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "model": self.model, "client": self.client, "rtt_ms": dict(self.rtt_ms),
                "node": self.node, "latency_ms": self.latency_ms, "status": self.status}  # fmt: skip

    @classmethod
    def parse(cls, data: Any) -> RequestRow:
        d = _obj(data, "request row")
        rtts = _obj(d.get("rtt_ms", {}), "rtt_ms")
        if len(rtts) > MAX_RTTS or not all(isinstance(k, str) and len(k) <= 64 for k in rtts):
            raise WireError(f"'rtt_ms' must map at most {MAX_RTTS} node ids to numbers")
        model = d.get("model")
        if not isinstance(model, str) or not valid_model(model):
            raise WireError("a request row needs a model name")
        return cls(_int(d, "id"), _float(d, "ts"), model, _str(d, "client", 128), {k: _float(rtts, k) for k in rtts},
                   _str(d, "node", optional=True), _float(d, "latency_ms", optional=True),
                   _int(d, "status", 100, 599))  # fmt: skip


@dataclass(frozen=True)
class RequestPage:
    """GET /stats/requests?since=CURSOR: rows after the cursor and the next cursor."""

    node_id: str
    requests: tuple[RequestRow, ...]
    next: int

    def to_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "requests": [r.to_json() for r in self.requests], "next": self.next}

    @classmethod
    def parse(cls, data: Any, since: int = 0) -> RequestPage:
        d = _obj(data, "request page")
        raw = d.get("requests")
        if not isinstance(raw, list) or len(raw) > MAX_PAGE:
            raise WireError(f"'requests' must be a list of at most {MAX_PAGE} rows")
        rows = tuple(RequestRow.parse(r) for r in raw)
        nxt = _int(d, "next")
        if nxt < since or any(not since < r.id <= nxt for r in rows):
            raise WireError("request page rows must lie after the cursor and up to 'next'")
        return cls(_node(d, "node_id"), rows, nxt)


ELECTION_KINDS = ("announce", "vote_request", "vote")


def _priority(d: Mapping[str, Any]) -> tuple[int, float, str]:
    p = d.get("priority")
    if not isinstance(p, list) or len(p) != 3:
        raise WireError("'priority' must be [int, number, node id]")
    box = {"p": p[0], "m": p[1], "n": p[2]}
    return (_int(box, "p", -(2**31), 2**31), _float(box, "m"), _node(box, "n"))


GRANT_CONTEXT = b"peerserve-grant-v1\0"
MAX_GRANTS = 256  # grants in one quorum certificate (a cluster's worth; the receiver verifies its members' only)
# grants a gossiped lease may carry (~7 KB at most): a majority of a cluster of up to 31; a larger certificate is not
# carried there (members that missed the announce ask the leader for it, as before)
MAX_LEASE_GRANTS = 16


@dataclass(frozen=True)
class Grant:
    """``voter``'s signed grant of its vote: its card and detached signature over ``signing_bytes`` (cluster, term,
    candidate, voter), as ``Lease`` and ``SuspectProof`` are signed, so the candidate can carry it to anyone."""

    voter: str
    card: str
    signature: str

    @staticmethod
    def signing_bytes(cluster: str, term: int, candidate: str, voter: str) -> bytes:
        return GRANT_CONTEXT + f"{cluster}\0{term}\0{candidate}\0{voter}".encode()

    def to_json(self) -> list[str]:
        return [self.voter, self.card, self.signature]

    @classmethod
    def parse(cls, data: Any) -> Grant:
        if not isinstance(data, list) or len(data) != 3:
            raise WireError("a grant is [voter, card, signature]")
        box = dict(zip(("v", "c", "s"), data, strict=True))
        return cls(_node(box, "v"), _str(box, "c", MAX_CARD), _str(box, "s", 128))


def _grants(d: Mapping[str, Any]) -> tuple[Grant, ...] | None:
    raw = d.get("cert")
    if raw is None:
        return None  # an older peer's announce: no certificate (refused by the election, with a log line)
    if not isinstance(raw, list) or len(raw) > MAX_GRANTS:
        raise WireError(f"'cert' must be a list of at most {MAX_GRANTS} grants")
    return tuple(Grant.parse(g) for g in raw)


@dataclass(frozen=True)
class ElectionPost:
    """POST /election/message: one election message (kind + fields of coordinator_election's messages).

    ``cert``: the quorum certificate (the voters' signed grants) of an announce, or of the term a sitting leader holds
    when it stands again (``cert_term``); ``grant``: a granted vote's signed grant. The machine sees certificates only
    as the voters whose grants the shell verified (agent.leadership)."""

    kind: str
    term: int
    node: str  # announce: leader; vote_request: candidate; vote: voter -- always the sender
    priority: tuple[int, float, str] | None = None
    granted: bool | None = None
    leader: str | None = None  # vote only: the leader the voter knows
    cert: tuple[Grant, ...] | None = None
    cert_term: int = 0
    grant: Grant | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "term": self.term}
        cert = {} if self.cert is None else {"cert": [g.to_json() for g in self.cert]}
        if self.kind == "announce":
            return {**out, "leader": self.node, "priority": list(self.priority or ()), **cert}
        if self.kind == "vote_request":
            extra = {**cert, "cert_term": self.cert_term} if cert else {}
            return {**out, "candidate": self.node, "priority": list(self.priority or ()), **extra}
        grant = {} if self.grant is None else {"grant": self.grant.to_json()}
        return {**out, "voter": self.node, "granted": self.granted, "leader": self.leader, **grant}

    @classmethod
    def from_message(cls, m: Message) -> ElectionPost:
        """The message without its proofs (the shell attaches grants: agent.leadership)."""
        if isinstance(m, Announce):
            return cls("announce", m.term, m.leader, m.priority)
        if isinstance(m, VoteRequest):
            return cls("vote_request", m.term, m.candidate, m.priority, cert_term=m.cert_term)
        return cls("vote", m.term, m.voter, None, m.granted, m.leader)

    def to_message(self) -> Message:
        """The message without its certificate (``voters`` None): the shell verifies the grants and adds the voters."""
        if self.kind == "announce":
            return Announce(self.term, self.node, self.priority or (0, 0.0, self.node))
        if self.kind == "vote_request":
            return VoteRequest(self.term, self.node, self.priority or (0, 0.0, self.node), None, self.cert_term)
        return Vote(self.term, self.node, bool(self.granted), self.leader)

    @classmethod
    def parse(cls, data: Any) -> ElectionPost:
        d = _obj(data, "election message")
        kind = d.get("type")
        if kind == "announce":
            return cls(kind, _int(d, "term"), _node(d, "leader"), _priority(d), cert=_grants(d))
        if kind == "vote_request":
            cert = _grants(d)
            cert_term = _int(d, "cert_term") if cert is not None else 0
            return cls(kind, _int(d, "term"), _node(d, "candidate"), _priority(d), cert=cert, cert_term=cert_term)
        if kind == "vote":
            if not isinstance(d.get("granted"), bool):
                raise WireError("'granted' must be a boolean")
            grant = Grant.parse(d["grant"]) if d.get("grant") is not None else None
            return cls(kind, _int(d, "term"), _node(d, "voter"), None, d["granted"], _node(d, "leader", optional=True),
                       grant=grant)  # fmt: skip
        raise WireError(f"unknown election message type {str(kind)[:40]!r}")


@dataclass(frozen=True)
class ClusterHint:
    """The public part of GET /cluster a joining node reads from a seed: whom to authenticate, and where."""

    node_id: str
    peer_port: int

    @classmethod
    def parse(cls, data: Any) -> ClusterHint:
        d = _obj(data, "cluster answer")
        return cls(_node(d, "node_id"), _int(d, "peer_port", 1, 65535))


# -- SWIM membership (agent.discovery.swim) --------------------------------------------------------------
SWIM_STATUSES = ("alive", "suspect", "dead", "left")
SWIM_KINDS = ("ping", "ack", "gossip", "ping_req", "indirect_ack", "sync")
MAX_PIGGYBACK = 24  # membership updates riding on one ping, ack or gossip message
MAX_SYNC = 300  # updates in one push-pull exchange (the whole table, this node included)


def _peer_url(v: Any) -> str:
    if not isinstance(v, str) or not names.PEER_URL.fullmatch(v):
        raise WireError("a peer URL must be https://IPv4:PORT")
    return v


@dataclass(frozen=True)
class MemberUpdate:
    """One membership fact as gossip carries it: a claim about ``node_id``, proof only when it speaks for itself."""

    node_id: str
    status: str  # alive | suspect | dead | left
    incarnation: int
    peer_url: str
    version: int = 0  # the node's resource-state version (agent.discovery.swim fetches newer states from it)
    origin: str = ""  # who suspects or declared it dead (Lifeguard confirmations count distinct origins)

    def to_json(self) -> list[Any]:
        return [self.node_id, self.status, self.incarnation, self.peer_url, self.version, self.origin]

    @classmethod
    def parse(cls, data: Any) -> MemberUpdate:
        if not isinstance(data, list) or len(data) != 6:
            raise WireError("a member update is [node, status, incarnation, peer_url, version, origin]")
        box = dict(zip(("n", "s", "i", "u", "v", "o"), data, strict=True))
        if box["s"] not in SWIM_STATUSES:
            raise WireError(f"unknown member status {str(box['s'])[:20]!r}")
        origin = _node(box, "o") if box["o"] != "" else ""
        return cls(_node(box, "n"), box["s"], _int(box, "i"), _peer_url(box["u"]), _int(box, "v"), origin)


LEASE_CONTEXT = b"peerserve-lease-v1\0"
SUSPECT_CONTEXT = b"peerserve-suspect-v1\0"
DEAD_CONTEXT = b"peerserve-dead-v1\0"
# signed suspicions and dead declarations riding on one membership message, both together (Lifeguard counts k = 3
# confirmers; a dead declaration acts at once from 2 members): a receiver verifies at most this many a message
MAX_PROOFS = 4


@dataclass(frozen=True)
class SuspectProof:
    """``origin``'s signed word that it suspects ``node_id`` at ``incarnation`` (its own probe missed), made at
    wall-clock ``stamp_ms``: any member may relay it, and a receiver counts ``origin`` as a Lifeguard confirmer
    only with it (or from ``origin`` itself). ``card``/``signature`` as in ``Lease``.

    ``dead``: ``origin``'s signed word that it declared ``node_id`` dead at ``incarnation`` (its own suspicion ran
    out, or its own probe missed once enough members had declared it): signed under another context, so no
    suspicion's signature passes for a declaration. Carried in ``SwimMessage.dead_proofs`` (the list says which)."""

    node_id: str
    incarnation: int
    origin: str
    stamp_ms: int
    card: str = ""
    signature: str = ""
    dead: bool = False

    def signing_bytes(self) -> bytes:
        context = DEAD_CONTEXT if self.dead else SUSPECT_CONTEXT
        return context + f"{self.node_id}\0{self.incarnation}\0{self.origin}\0{self.stamp_ms}".encode()

    def to_json(self) -> list[Any]:
        return [self.node_id, self.incarnation, self.origin, self.stamp_ms, self.card, self.signature]

    @classmethod
    def parse(cls, data: Any, dead: bool = False) -> SuspectProof:
        if not isinstance(data, list) or len(data) != 6:
            raise WireError("a suspicion proof is [node, incarnation, origin, stamp_ms, card, signature]")
        box = dict(zip(("n", "i", "o", "t", "c", "s"), data, strict=True))
        return cls(_node(box, "n"), _int(box, "i"), _node(box, "o"), _int(box, "t"), _str(box, "c", MAX_CARD),
                   _str(box, "s", 128), dead)  # fmt: skip


@dataclass(frozen=True)
class Loads:
    """The sender's own load figures, riding on every SWIM message it sends (its resource state's fast part:
    a change of these alone no longer makes every member fetch its whole state)."""

    mem_available_mb: float
    cpu_load: float
    gpu_load: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mem_available_mb": self.mem_available_mb, "cpu_load": self.cpu_load, "gpu_load": self.gpu_load}

    @classmethod
    def parse(cls, data: Any) -> Loads:
        d = _obj(data, "loads")
        return cls(_float(d, "mem_available_mb"), _float(d, "cpu_load"), _float(d, "gpu_load", optional=True))


@dataclass(frozen=True)
class Lease:
    """The leader's lease renewal: (term, leader, seq) signed by the leader itself, so any member may relay it.

    ``seq`` rises with every renewal of one leader; a receiver renews its lease only on a (term, seq) newer
    than any it saw from that leader (a replayed or stale renewal renews nothing). ``card`` is the leader's
    certified key (agent.identity.Card) and ``signature`` its Ed25519 signature over ``signing_bytes()``."""

    term: int
    leader: str
    seq: int
    priority: tuple[int, float, str]
    card: str = ""
    signature: str = ""
    # the leader's quorum certificate of (term, leader), at most MAX_LEASE_GRANTS grants: carried on the lease's pushes
    # now and then (not on every piggyback), so a member that missed the winner's announce can verify the leader from
    # the gossiped lease alone. Not signed by the leader: each grant is its voter's own signature of (term, leader)
    cert: tuple[Grant, ...] = ()

    def signing_bytes(self) -> bytes:
        p = self.priority
        return LEASE_CONTEXT + f"{self.term}\0{self.leader}\0{self.seq}\0{p[0]}\0{float(p[1])!r}\0{p[2]}".encode()

    def to_json(self) -> dict[str, Any]:
        out = {"term": self.term, "leader": self.leader, "seq": self.seq, "priority": list(self.priority),
               "card": self.card, "signature": self.signature}  # fmt: skip
        if self.cert:
            out["cert"] = [g.to_json() for g in self.cert]
        return out

    @classmethod
    def parse(cls, data: Any) -> Lease:
        d = _obj(data, "lease")
        raw = d.get("cert", [])
        if not isinstance(raw, list) or len(raw) > MAX_LEASE_GRANTS:
            raise WireError(f"a lease's 'cert' must be a list of at most {MAX_LEASE_GRANTS} grants")
        return cls(_int(d, "term"), _node(d, "leader"), _int(d, "seq"), _priority(d), _str(d, "card", MAX_CARD),
                   _str(d, "signature", 128), tuple(Grant.parse(g) for g in raw))  # fmt: skip


@dataclass(frozen=True)
class SwimMessage:
    """POST /peer/swim and its answer: the sender's own facts (authenticated: it signed them) plus gossip.

    ``ping``/``gossip`` are answered with an ``ack``; ``ping_req`` asks the receiver to probe ``target`` at
    ``target_url`` and is answered with ``indirect_ack`` (``acked``: whether the target answered it);
    ``sync`` (push-pull) carries the sender's whole table and is answered with the receiver's.
    """

    kind: str
    node_id: str  # the sender; must be the node that signed the message
    incarnation: int
    version: int
    peer_url: str
    updates: tuple[MemberUpdate, ...] = ()
    term: int = 0  # the leader's lease as the sender knows it: term and leader
    leader: str | None = None
    target: str | None = None
    target_url: str | None = None
    acked: bool = False
    lease: Lease | None = None  # the freshest leader's lease the sender holds (signed by that leader)
    loads: Loads | None = None  # the sender's own loads now (older senders send none)
    proofs: tuple[SuspectProof, ...] = ()  # signed suspicions of the updates it carries (older senders send none)
    # signed dead declarations of the updates it carries (a key of its own: receivers of the version before ignore it)
    dead_proofs: tuple[SuspectProof, ...] = ()
    # operator-CA mode: (stamp, digest) of the sender's revocation list in force (agent/revocation_sync.py)
    revocations: tuple[int, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "node_id": self.node_id, "incarnation": self.incarnation,
                               "version": self.version, "peer_url": self.peer_url, "term": self.term,
                               "leader": self.leader, "updates": [u.to_json() for u in self.updates]}  # fmt: skip
        if self.kind in ("ping_req", "indirect_ack"):
            out.update(target=self.target, target_url=self.target_url, acked=self.acked)
        if self.lease is not None:
            out["lease"] = self.lease.to_json()
        if self.loads is not None:
            out["loads"] = self.loads.to_json()
        if self.proofs:
            out["proofs"] = [p.to_json() for p in self.proofs]
        if self.dead_proofs:
            out["dead_proofs"] = [p.to_json() for p in self.dead_proofs]
        if self.revocations is not None:
            out["revocations"] = list(self.revocations)
        return out

    @classmethod
    def parse(cls, data: Any) -> SwimMessage:
        d = _obj(data, "membership message")
        kind = d.get("kind")
        if kind not in SWIM_KINDS:
            raise WireError(f"unknown membership message kind {str(kind)[:20]!r}")
        raw = d.get("updates")
        limit = MAX_SYNC if kind == "sync" else MAX_PIGGYBACK
        if not isinstance(raw, list) or len(raw) > limit:
            raise WireError(f"'updates' must be a list of at most {limit}")
        target = target_url = None
        acked = False
        if kind in ("ping_req", "indirect_ack"):
            target, target_url = _node(d, "target"), _peer_url(d.get("target_url"))
            if not isinstance(d.get("acked", False), bool):
                raise WireError("'acked' must be a boolean")
            acked = bool(d.get("acked", False))
        lease = Lease.parse(d["lease"]) if d.get("lease") is not None else None
        loads = Loads.parse(d["loads"]) if d.get("loads") is not None else None
        proofs, dead = d.get("proofs", []), d.get("dead_proofs", [])
        if not isinstance(proofs, list) or not isinstance(dead, list) or len(proofs) + len(dead) > MAX_PROOFS:
            raise WireError(f"'proofs' and 'dead_proofs' must be lists of at most {MAX_PROOFS} in all")
        return cls(kind, _node(d, "node_id"), _int(d, "incarnation"), _int(d, "version"), _peer_url(d.get("peer_url")),
                   tuple(MemberUpdate.parse(u) for u in raw), _int(d, "term"), _node(d, "leader", optional=True),
                   target, target_url, acked, lease, loads, tuple(SuspectProof.parse(p) for p in proofs),
                   tuple(SuspectProof.parse(p, dead=True) for p in dead),
                   _revocation_advert(d.get("revocations")))  # fmt: skip


def _revocation_advert(v: Any) -> tuple[int, str] | None:
    """A SWIM message's (stamp, digest) of its sender's revocation list: [0 .. MAX_TERM, 32 hex digits], or none."""
    if v is None:
        return None
    if (
        not isinstance(v, list) or len(v) != 2 or isinstance(v[0], bool) or not isinstance(v[0], int)
        or not 0 <= v[0] <= MAX_TERM or not isinstance(v[1], str) or not LIST_DIGEST.fullmatch(v[1])
    ):  # fmt: skip
        raise WireError("'revocations' must be [stamp, 32 hex digits]")
    return v[0], v[1]
