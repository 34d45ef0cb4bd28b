"""What the client accepts from an agent or a model server: every answer checked before it is used (pure).

An agent found by mDNS over plain HTTP cannot be authenticated (docs/security.md), and even an honest
agent's answer can be cut short or replaced on the way (a captive portal's HTML page). So a 200 is used
only when it has the shape the client reads: the right JSON types, finite numbers, node ids and model
names as the agents write them, http(s) URLs without credentials, and lists and strings within bounds.
Anything else is ``Malformed`` (a ValueError), which the operations treat like a 5xx: the next agent is
asked (but for an inference answer over its bounds, ``TooLarge``: see client/ops.py). Reading is bounded
before it is parsed (an answer's JSON values are counted from its bytes, peerserve/jsonbound.py, and held to
``CONTROL_VALUES``, or for an inference answer weighted by what they cost parsed and held to
``ANSWER_VALUES``: parsed, 4 MiB of ``{},`` was +115 MiB) and total (``checked``: whatever goes wrong
reading or checking an answer, a RecursionError from its nesting or an OverflowError from a 400-digit number
included, is ``Malformed``: review 12b found both raised out of the client instead of failing over).
``retry_after_s`` reads a Retry-After header (seconds or an HTTP date) without ever raising.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from peerserve import names
from peerserve.jsonbound import cost_at_most, values_at_most

# as the agents write and the wire accepts them: the one definition in peerserve/names.py (standard library
# only: the client still needs only httpx and zeroconf)
NODE_ID = names.NODE_ID
MODEL_NAME = names.MODEL_NAME
MAX_MEMBERS = 256  # members in a /cluster answer (an agent's SWIM table holds at most 256)
MAX_RTT_NODES = 64  # nodes the client probes and reports (an agent refuses an RTT report naming more)
MAX_ENDPOINTS = 1024  # entries of a /services answer (one per deployed model)
MAX_ALTERNATIVES = 8  # alternatives of one endpoint (agents send 3)
MAX_MODELS = 256  # models listed for one member
MAX_WHY = 16  # keys of an endpoint's "why"
MAX_TEXT = 256  # characters of a short string (URL, status, a "why" value)
WHY_NUMBERS = ("rtt_ms", "exec_ms", "estimated_ms", "load", "in_flight")  # read as numbers (the CLI formats them)
CONTROL_LIMIT = 4 * 1024 * 1024  # bytes of an agent's control answer (/cluster of 256 members is ~80 KB)
# JSON values (peerserve/jsonbound.py) of a control answer, an error answer's too: /cluster of 256 members
# naming 256 models each is ~68,000, /services of 1,024 endpoints ~46,000; parsed, 131,072 values cost at most
# ~12.5 MiB (one-key objects; 4.7 MiB as {}), where 4 MiB of {} was 115 MiB
CONTROL_VALUES = 131_072
# defaults of an inference answer's bounds (TF-Serving's predictions, v2 outputs; Client(max_answer_bytes=,
# max_answer_values=) sets them): its bytes, and its JSON values weighted by what they cost parsed
# (jsonbound.cost_at_most: a list, object or string counts as 3-5, a number as 1). Parsed, a unit costs at
# most ~36 bytes (a float 32), so the worst answer let through costs what an honest one at the bound does:
# RSS +375 MiB while parsing 8 M floats (56 MiB) or 8 M units of -6, +346 MiB of one-key objects; YOLOv5's
# output [1, 25200, 85] (~2.22 M units, 16.2 MiB) +100 MiB. Review 12b's 1,048,576 plain values and 32 MiB
# refused YOLO (review 12c); unweighted, 64 MiB of {} was 1.6 GiB
ANSWER_VALUES = 8 * 1024 * 1024
ANSWER_LIMIT = 64 * 1024 * 1024
# a placement's method, mode and status, a member's status: what the agents write ("ipopt", "least-loaded", "1",
# "optimal", "suspect"), ASCII letters, digits and a few marks, no space: nothing an agent could blank or pad with
# (review27c I3: str.isprintable takes the Hangul fillers and the braille blank)
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}")
MAX_TERM = 2**63 - 1  # a term or a count is a non-negative integer below this (the agents' SQLite integer)
SNIPPET = 60  # characters of an answer quoted in a Malformed
RETRY_AFTER_DEFAULT_S = 1.0
RETRY_AFTER_MAX_S = 300.0

T = TypeVar("T")


class Malformed(ValueError):
    """An answer the client cannot use; it counts as a failed call (the next agent or server is asked)."""


class TooLarge(Malformed):
    """An answer over its bound of JSON values. From an agent's control route it is a failed call like any
    Malformed; an inference answer over it is real, perhaps (the model's output is as large as it is), and
    would be as large from any server: the operations raise client.errors.AnswerTooLarge instead of asking
    the next one (client/ops.py)."""

    def __init__(self, message: str, bound: int) -> None:
        super().__init__(message)
        self.bound = bound


def snippet(response: httpx.Response, characters: int = SNIPPET) -> str:
    """The answer's first ``characters`` characters (UTF-8, undecodable bytes replaced), decoding no more
    than those: ``response.text`` would decode all of it (32 MiB, 128 MiB as a str) to quote 60 of them."""
    return response.content[: 4 * characters].decode("utf-8", "replace")[:characters]


def body(response: httpx.Response, values: int = CONTROL_VALUES, count: Callable[[bytes], int] = values_at_most) -> Any:
    """The answer's JSON (NaN and Infinity refused: they are not JSON), if it has at most ``values`` values
    as ``count`` counts them before parsing (else ``TooLarge``; ``cost_at_most`` weights them by their cost
    parsed) and nests no deeper than json.loads can read (~1,000: a RecursionError)."""
    content = response.content
    if count(content) > values:
        weighted = " (weighted)" if count is cost_at_most else ""
        raise TooLarge(f"HTTP {response.status_code} answer has more than {values} JSON values{weighted}", values)
    try:
        return json.loads(content, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Malformed(f"HTTP {response.status_code} answer is not JSON ({snippet(response)!r})") from exc
    except RecursionError:
        raise Malformed(f"HTTP {response.status_code} answer nests too deep") from None


def checked(
    response: httpx.Response,
    parse: Callable[[Any], T],
    values: int = CONTROL_VALUES,
    count: Callable[[bytes], int] = values_at_most,
) -> T:
    """``parse`` of the answer's JSON (``body``), total: any exception reading or checking it is ``Malformed``,
    so a shape no check foresaw makes the client ask the next agent or server instead of raising out of it."""
    try:
        return parse(body(response, values, count))
    except Malformed:
        raise
    except Exception as exc:
        raise Malformed(f"HTTP {response.status_code} answer not checkable ({type(exc).__name__})") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(value: Any, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise Malformed(f"{what}: not a string of at most {limit} characters")
    return value


def _number(value: Any, what: str) -> float:
    """A finite number as a float (an integer past float's range, 1 followed by 400 zeros, is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"{what}: not a finite number")
    try:
        number = float(value)
    except OverflowError:
        raise Malformed(f"{what}: not a finite number") from None
    if not math.isfinite(number):
        raise Malformed(f"{what}: not a finite number")
    return number


def _token(value: Any, what: str, limit: int = 64, optional: bool = True) -> str | None:
    """A short word (``TOKEN``, at most ``limit`` characters), or None where ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit or TOKEN.fullmatch(value) is None:
        raise Malformed(f"{what}: not a word of at most {limit} letters, digits or '_.:+-'")
    return value


def _count(value: Any, what: str) -> int | None:
    """A term or a count: a non-negative integer, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TERM:
        raise Malformed(f"{what}: not a non-negative integer")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise Malformed(f"{what}: not a list of at most {limit}")
    return value


def usable(values: list[Any], check: Callable[[Any], T], what: str, some: bool = True) -> tuple[list[T], int]:
    """The entries of a (bounded) list that pass ``check``, and how many were dropped. One entry the client
    cannot use (a member whose URL has a path, a model name it refuses) does not spoil the others: agents
    apply the same rules at the wire (peerserve/names.py), so an honest cluster sends none, but an agent of
    an older version could still relay one to every agent's answer, and refusing the whole answer would refuse every
    agent. With ``some``, a list with entries
    of which none is usable is ``Malformed`` (the answer is garbage: the next agent is asked)."""
    kept: list[T] = []
    for value in values:
        try:
            kept.append(check(value))
        except Malformed:
            continue
    if some and values and not kept:
        raise Malformed(f"{what}: none of {len(values)} usable")
    return kept, len(values) - len(kept)


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what}: not a JSON object")
    return value


def node_id(value: Any, what: str = "node") -> str:
    if not names.valid_node_id(value):
        raise Malformed(f"{what}: not a node id")
    return str(value)


def model_name(value: Any, what: str = "model") -> str:
    if not names.valid_model_name(value):
        raise Malformed(f"{what}: not a model name")
    return str(value)


def base_url(value: Any, what: str = "url") -> str:
    """An http(s) base URL: a host (a name, IPv4, [IPv6]), an optional port, nothing else (no credentials,
    path, query or fragment): peerserve/names.py, the rule the agents' wire applies too."""
    url = names.base_url(_text(value, what))
    if url is None:
        raise Malformed(f"{what}: not an http(s) base URL")
    return url


def why(value: Any) -> dict[str, Any]:
    """An endpoint's reasons: short keys, numbers finite, strings short; the numeric ones numbers."""
    data = _object(value, "why")
    if len(data) > MAX_WHY:
        raise Malformed(f"why: over {MAX_WHY} keys")
    out: dict[str, Any] = {}
    for k, v in data.items():
        _text(k, "why key", 64)
        if k in WHY_NUMBERS or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[k] = _number(v, f"why.{k}")
        elif v is None or isinstance(v, bool):
            out[k] = v
        else:
            out[k] = _text(v, f"why.{k}")
    return out


def endpoint_fields(value: Any, model: str | None, alternative: bool = False) -> dict[str, Any]:
    """One endpoint (``model`` when the question named one: the answer must be about it); alternatives the
    client cannot use are dropped, counted in ``dropped``. An ``alternative``'s own alternatives are not read
    (agents send none; read, they recursed once per level: 400 levels nested raised RecursionError)."""
    data = _object(value, "endpoint")
    name = model_name(data.get("model"))
    if model is not None and name != model:
        raise Malformed(f"asked for {model!r}, the answer is about {name!r}")
    listed = [] if alternative else _list(data.get("alternatives", []), "alternatives", MAX_ALTERNATIVES)
    alternatives, dropped = usable(listed, lambda a: endpoint_fields(a, name, True), "alternatives", some=False)
    out = {"model": name, "node": node_id(data.get("node")), "url": base_url(data.get("url")),
           "why": why(data.get("why", {})), "alternatives": alternatives, "dropped": dropped}  # fmt: skip
    return out


def services(value: Any) -> tuple[list[dict[str, Any]], int]:
    """A /services answer: its usable endpoints, and how many entries were dropped (alternatives included)."""
    kept, dropped = usable(_list(value, "/services", MAX_ENDPOINTS), lambda e: endpoint_fields(e, None), "/services")
    return kept, dropped + sum(e["dropped"] for e in kept)


def endpoints(value: Any) -> list[dict[str, Any]]:
    """A /services answer's usable endpoints."""
    return services(value)[0]


def member(value: Any) -> dict[str, Any]:
    data = dict(_object(value, "member"))
    data["node_id"] = node_id(data.get("node_id"), "member node_id")
    data["api_url"] = base_url(data.get("api_url"), "member api_url")
    data["status"] = _token(data.get("status"), "member status", 16, optional=False)
    data["models"] = [model_name(m) for m in _list(data.get("models", []), "member models", MAX_MODELS)]
    if "mem_available_mb" in data:
        data["mem_available_mb"] = _number(data["mem_available_mb"], "member mem_available_mb")
    if data.get("gpu_load") is not None:
        data["gpu_load"] = _number(data["gpu_load"], "member gpu_load")
    return data


def cluster(value: Any) -> dict[str, Any]:
    """A /cluster answer: members checked (the client learns nodes from them), those it cannot use dropped
    and counted (``members_dropped``); what the CLI prints checked for its shape: the node asked and the leader node
    ids, the terms and the request count integers, the placement's method, mode and status short words, its numbers
    finite (review27c I3: a leader, term or method of Hangul fillers or braille blanks printed as blank or padding).
    Each may be null (no leader yet, no placement), the node asked absent. The answering agent's own fields (node
    id, leader, term: an honest agent's are its settings' and the wire's, which checks them) refuse the answer; a
    placement's relayed ones of another shape are null."""
    data = dict(_object(value, "/cluster"))
    if data.get("node_id") is not None:
        data["node_id"] = node_id(data["node_id"], "node_id")
    if data.get("leader") is not None:
        data["leader"] = node_id(data["leader"], "leader")
    data["term"] = _count(data.get("term"), "term")
    listed = _list(data.get("members", []), "members", MAX_MEMBERS)
    data["members"], data["members_dropped"] = usable(listed, member, "members")
    placement = data.get("last_placement")
    if placement is not None:
        p = dict(_object(placement, "last_placement"))
        for key in ("objective_ms", "solve_ms"):
            if p.get(key) is not None:
                p[key] = _number(p[key], f"last_placement.{key}")
        # shown as null, not refused: the leader's summary is relayed to every agent's /cluster as sent (peerserve/
        # wire.py ``_placement`` checks only what /metrics reads), so refusing the answer would refuse every agent's
        # and the client could find none, as one ``"actions": null`` did (review27a L2)
        for key, check in (("term", _count), ("requests", _count), ("method", _token), ("mode", _token),
                           ("status", _token)):  # fmt: skip
            try:
                p[key] = check(p.get(key), f"last_placement.{key}")
            except Malformed:
                p[key] = None
        # null is no actions, as the agents' wire takes it (peerserve/wire.py ``_actions``): refused here, one
        # summary with it made every agent's /cluster malformed and the client unable to find any (review27a L2)
        actions = p.get("actions")
        if actions is not None and not isinstance(actions, list):
            raise Malformed("last_placement.actions: not a list")
        p["actions"] = actions or []
        data["last_placement"] = p
    return data


def inference(value: Any, protocol: str) -> dict[str, Any]:
    """A model's answer: TF-Serving REST ``{"predictions"}`` / ``{"outputs"}``, or v2 ``{"outputs": [...]}``."""
    data = dict(_object(value, f"{protocol} answer"))
    if protocol == "v2":
        if not isinstance(data.get("outputs"), list):
            raise Malformed("v2 answer has no outputs list")
    elif "predictions" not in data and "outputs" not in data:
        raise Malformed("TF-Serving answer has neither predictions nor outputs")
    return data


def retry_after_s(value: str | None, now: float) -> float:
    """Seconds a Retry-After header asks for: delta-seconds or an HTTP date (RFC 9110 10.2.3), read at wall
    time ``now``; within 0..RETRY_AFTER_MAX_S; RETRY_AFTER_DEFAULT_S when absent or unreadable."""
    text = (value or "").strip()[:64]
    if not text:
        return RETRY_AFTER_DEFAULT_S
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return RETRY_AFTER_DEFAULT_S
        if when.tzinfo is None:  # an HTTP date is GMT
            return RETRY_AFTER_DEFAULT_S
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return RETRY_AFTER_DEFAULT_S
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)
