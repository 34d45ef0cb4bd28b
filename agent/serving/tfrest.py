"""TensorFlow Serving's REST API as pure functions: path parsing, predict/classify/regress, status, metadata.

Follows tensorflow/serving's own code, not just its docs: ``http_rest_api_util.cc`` (the two path regexes,
case-insensitive, version parsed as int64), ``http_rest_api_handler.cc`` (dispatch: anything that does not
parse is ``400 Malformed request: METHOD PATH``), ``util/json_tensor.cc`` (request JSON: error texts for
both keys, empty or ragged instances, named rows, ``signature_name``). Every error is
``(status, "message")``, sent as exactly ``{"error": "message"}``. Declared shapes are not enforced.

Bounds TF-Serving does not have (the stand-in is reachable from the LAN and runs in a 64 MiB container):
at most ``MAX_VALUES`` JSON values per body (counted before parsing, from its separators: the count in
peerserve/jsonbound.py, which the client shares), nesting at most ``MAX_DEPTH`` deep (checked after parsing,
without recursion, before any model runs), and a JSON value quoted in an error message is cut at
``MAX_QUOTE`` characters. A model's arithmetic error on legal JSON (an overflow, a value it cannot take) is
the client's 400, as ModelInputError is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from agent.models import ModelInputError, Signature, TinyModel
from peerserve.jsonbound import values_at_most

INT64_MAX = 2**63 - 1
MAX_VALUES = 65_536  # JSON values per body: 1,024 digits images of 64 pixels; ~4 MiB parsed at most
MAX_DEPTH = 64  # nesting: the models and the encoder recurse; json.loads alone takes ~1,000 before RecursionError
MAX_QUOTE = 1_024  # characters of a JSON value quoted in an error (TF-Serving quotes it whole: 8 MiB in, 30 out)
# kPredictionApiGegex and kModelStatusApiRegex from http_rest_api_util.cc (RE2 FullMatch, (?i)).
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?", re.IGNORECASE
)


class TFError(Exception):
    """A TF-Serving error: HTTP status and the message of ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Route:
    """A parsed TF-Serving REST request path."""

    kind: str  # predict | classify | regress | metadata | status
    model: str
    version: int | None = None
    label: str | None = None


def parse_path(method: str, path: str) -> Route:
    """METHOD + path (no query) -> Route, or TFError(400) as TF-Serving's ParseModelInfo would."""
    malformed = TFError(400, f"Malformed request: {method} {path}")
    if method == "POST":
        m = PREDICT_PATH.fullmatch(path)
        if m is None or m.group(4) not in ("classify", "regress", "predict"):  # the match is (?i), the dispatch not
            raise malformed
        kind = m.group(4)
    elif method == "GET":
        m = STATUS_PATH.fullmatch(path)
        if m is None:
            raise malformed
        kind = "metadata" if m.group(4) == "metadata" else "status"  # ".../METADATA" is a status request
    else:
        raise malformed
    name, version, label = unquote(m.group(1) or ""), m.group(2), m.group(3)
    if version is not None and (len(version) > 19 or int(version) > INT64_MAX):  # (int() of 4,301+ digits raises)
        raise TFError(400, f"Failed to convert version: {version} to numeric.")
    if not name:
        raise TFError(400, "Missing model name in request.")
    return Route(kind, name, int(version) if version is not None else None, unquote(label) if label else None)


def not_served(route: Route) -> TFError:
    """TF-Serving's error for a request to a model, or a version of it, that it does not serve: a status GET's from
    ``GetModelStatusImpl`` (a label is not read there), the others' from ``ServerCore::GetServableHandle``: a label
    it cannot resolve (for an unknown model too) is ``GetModelVersionForLabel``'s 400, else ``ServableRequest``'s
    ``Latest(name)`` or ``Specific(name, version)``."""
    if route.kind == "status":
        if route.version is not None:
            return TFError(404, f"Could not find version {route.version} of model {route.model}")
        return TFError(404, f"Could not find any versions of model {route.model}")
    if route.label is not None:
        return TFError(400, f"Unrecognized servable version label: {route.label}")
    if route.version is not None:
        return TFError(404, f"Servable not found for request: Specific({route.model}, {route.version})")
    return TFError(404, f"Servable not found for request: Latest({route.model})")


def _clip(value: Any, room: list[int]) -> tuple[Any, bool]:
    """(``value`` with strings cut and arrays/objects ended once ``room[0]`` characters are spent, whether it was).

    Recursive, over a document parse_body has bounded to MAX_DEPTH; it stops at the budget, so quoting an
    8 MiB string or 65,536 numbers costs what the quote does, not what rendering the value would (6x escaped).
    """
    if isinstance(value, str):
        room[0] -= len(value) + 2
        return value[: MAX_QUOTE + 1], len(value) > MAX_QUOTE
    if isinstance(value, (list, dict)):
        room[0] -= 2
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        out: dict[Any, Any] = {}
        for k, v in pairs:
            if room[0] <= 0:
                return (out if isinstance(value, dict) else list(out.values())), True
            key, cut_key = _clip(k, room) if isinstance(k, str) else (k, False)
            out[key], cut = _clip(v, room)
            room[0] -= 1
            if cut or cut_key:
                return (out if isinstance(value, dict) else list(out.values())), True
        return (out if isinstance(value, dict) else list(out.values())), False
    room[0] -= len(json.dumps(value))  # a number, true, false or null
    return value, False


def _debug(value: Any) -> str:
    """rapidjson's compact rendering of a JSON value (JsonValueToDebugString), cut at MAX_QUOTE characters."""
    clipped, cut = _clip(value, [MAX_QUOTE])
    text = json.dumps(clipped, separators=(",", ":"))
    return text if len(text) <= MAX_QUOTE and not cut else text[:MAX_QUOTE] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def deeper_than(doc: Any, limit: int) -> bool:
    """Whether arrays/objects nest more than ``limit`` deep in ``doc`` (iterative: no recursion to overflow)."""
    level, depth = [doc], 0  # level by level: the numbers of a batch are looked at once, never stacked
    while True:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            return False
        if depth >= limit:
            return True
        depth += 1
        level = [v for c in containers for v in (c.values() if isinstance(c, dict) else c)]


def parse_body(body: bytes) -> dict[str, Any]:
    """Request body -> JSON object, with json_tensor.cc's ParseJson errors (and the module's bounds)."""
    if not body:
        raise TFError(400, "JSON Parse error: The document is empty")
    if values_at_most(body) > MAX_VALUES:  # parsed, a value costs up to ~60 bytes for 2-3 bytes of body
        raise TFError(400, f"JSON Parse error: more than {MAX_VALUES} values in one request")
    few_containers = body.count(b"[") + body.count(b"{") <= MAX_DEPTH  # then nothing nests deeper: no walk
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TFError(400, f"JSON Parse error: Invalid value. ({exc})") from None
    except RecursionError:
        raise TFError(400, f"JSON Parse error: nested more than {MAX_DEPTH} deep") from None
    if not few_containers and deeper_than(doc, MAX_DEPTH):
        raise TFError(400, f"JSON Parse error: nested more than {MAX_DEPTH} deep")
    if not isinstance(doc, dict):
        raise TFError(400, f"JSON Value: {_debug(doc)} Is not object")
    return doc


def signature_of(model: TinyModel, doc: dict[str, Any]) -> tuple[str, Signature]:
    """The request's signature (``signature_name``, default serving_default) or TFError(400)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise TFError(
            400, f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    name = name or "serving_default"
    sig = model.signatures.get(name)
    if sig is None:
        raise TFError(400, f'Serving signature name: "{name}" not found in signature def')
    return name, sig


def _shape(value: Any, dtype: str) -> tuple[tuple[int, ...], int]:
    """(dense shape, element count) of a JSON tensor; TFError on a wrong element type or raggedness."""
    if isinstance(value, list):
        if not value:
            return (0,), 0
        parts = [_shape(v, dtype) for v in value]
        if any(p != parts[0] for p in parts):
            raise TFError(400, f"JSON Value: {_debug(value)} is ragged: every element must have the same shape")
        return (len(value), *parts[0][0]), sum(p[1] for p in parts)
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise TFError(400, f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: string")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TFError(400, f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: float")
    return (), 1


def _rows(instances: list[Any], sig: Signature) -> list[Any]:
    """The per-instance tensors of a row-format request (FillTensorMapFromInstancesList's checks)."""
    (alias, tensor), names = next(iter(sig.inputs.items())), sorted(sig.inputs)
    objects = isinstance(instances[0], dict)
    shape: tuple[int, ...] | None = None
    rows = []
    for i, elem in enumerate(instances):
        if objects != isinstance(elem, dict):
            kind = "object but got list" if objects else "value/list but got object"
            raise TFError(400, f"Expecting {kind} at item {i} of input list")
        if objects:
            if sorted(elem) != names:
                raise TFError(400, f"Failed to process element: {i} of 'instances' list. JSON object: "
                                   f"{_debug(elem)} keys must be equal to: {','.join(names)}")  # fmt: skip
            elem = elem[alias]
        try:
            this, _ = _shape(elem, tensor.dtype)
        except TFError as exc:
            raise TFError(400, f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: "
                               f"{exc.message}") from None  # fmt: skip
        if shape is not None and this != shape:
            raise TFError(400, f"Failed to process element: {i} of 'instances' list. Error: INVALID_ARGUMENT: "
                               f"Expecting shape {list(shape)} but got: {list(this)}")  # fmt: skip
        shape = this
        rows.append(elem)
    return rows


def _run(sig: Signature, value: Any) -> Any:
    """The model on one input; what it cannot compute from legal JSON (overflow, a value it cannot take) is a 400."""
    try:
        return sig.run(value)
    except ModelInputError as exc:
        raise TFError(400, str(exc)) from None
    except (ValueError, ArithmeticError, RecursionError) as exc:
        raise TFError(400, f"the model cannot compute this input: {type(exc).__name__}: {str(exc)[:200]}") from None


def predict(model: TinyModel, doc: dict[str, Any]) -> dict[str, Any]:
    """A :predict request (row or columnar format) -> its answer; TFError as json_tensor.cc words it."""
    _, sig = signature_of(model, doc)
    alias, tensor = next(iter(sig.inputs.items()))
    ((out_alias, _),) = sig.outputs.items()
    if "instances" in doc and "inputs" in doc:
        raise TFError(400, f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one of 'inputs' "
                           "or 'instances' keys to exist ")  # fmt: skip
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise TFError(400, f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise TFError(400, f"JSON Value: {_debug(doc)} No values in 'instances' array")
        named = isinstance(instances[0], dict)
        outputs = [_run(sig, row) for row in _rows(instances, sig)]
        return {"predictions": [{out_alias: o} for o in outputs] if named and len(sig.outputs) > 1 else outputs}
    if "inputs" in doc:
        value = doc["inputs"]
        if isinstance(value, dict):
            if alias not in value:
                raise TFError(400, f"Missing named input: {alias} in 'inputs' object.")
            value = value[alias]
        _shape(value, tensor.dtype)
        batch = isinstance(value, list) and tensor.dims is not None and len(tensor.dims) > 1
        return {"outputs": [_run(sig, row) for row in value] if batch else _run(sig, value)}
    raise TFError(400, "Missing 'inputs' or 'instances' key")


def classify_or_regress(model: TinyModel, kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A :classify or :regress request over tf.Example-style ``examples`` -> ``{"results": ...}``."""
    name, sig = signature_of(model, doc)
    if sig.method != kind:
        raise TFError(400, f"Expected {'classification' if kind == 'classify' else 'regression'} signature "
                           f"method_name to be tensorflow/serving/{kind}. Was: {sig.method_name}")  # fmt: skip
    examples = doc.get("examples")
    if not isinstance(examples, list):
        raise TFError(400, f"JSON Value: {_debug(doc)} Expecting 'examples' to be an list/array")
    results = []
    for ex in examples:
        if not isinstance(ex, dict):
            raise TFError(400, f"Example must be JSON object but got JSON {_json_type(ex).lower()}")
        if sig.feature not in ex:
            raise TFError(400, f"Example is missing feature {sig.feature!r} that signature {name} reads")
        _shape(ex[sig.feature], "DT_FLOAT")
        y = _run(sig, ex[sig.feature])
        y = y[0] if isinstance(y, list) and len(y) == 1 else y
        results.append([["", y]] if kind == "classify" else y)
    return {"results": results}


def status(version: int) -> dict[str, Any]:
    """GetModelStatus's JSON for one AVAILABLE version."""
    return {
        "model_version_status": [
            {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def metadata(model: TinyModel, name: str, version: int) -> dict[str, Any]:
    """GetModelMetadata's JSON, shaped as saved_model_half_plus_two_2_versions_metadata.json."""

    def tensor(t: Any) -> dict[str, Any]:
        shape: dict[str, Any] = {"dim": [], "unknown_rank": True}
        if t.dims is not None:
            shape = {"dim": [{"size": str(d), "name": ""} for d in t.dims], "unknown_rank": False}
        return {"dtype": t.dtype, "tensor_shape": shape, "name": t.tensor_name}

    defs = {
        sig_name: {
            "inputs": {a: tensor(t) for a, t in sig.inputs.items()},
            "outputs": {a: tensor(t) for a, t in sig.outputs.items()},
            "method_name": sig.method_name,
            "defaults": {},
        }
        for sig_name, sig in model.signatures.items()
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": defs}},
    }


def handle(model: TinyModel, served_name: str, version: int, method: str, path: str, body: bytes) -> tuple[int, Any]:
    """One request to a server of ``model`` served as ``served_name``/``version`` -> (status, JSON)."""
    try:
        route = parse_path(method, path)
        if route.model != served_name:
            raise not_served(route)
        if route.label is not None:  # the stand-in has no labels
            raise TFError(400, f"Unrecognized servable version label: {route.label}")
        if route.version is not None and route.version != version:
            raise not_served(route)
        if route.kind == "status":
            return 200, status(version)
        if route.kind == "metadata":
            return 200, metadata(model, served_name, version)
        doc = parse_body(body)
        if route.kind == "predict":
            return 200, predict(model, doc)
        return 200, classify_or_regress(model, route.kind, doc)
    except TFError as exc:  # messages quote the request (a signature name, a path): at most 4 quotes' worth
        return exc.status, {
            "error": exc.message if len(exc.message) <= 4 * MAX_QUOTE else exc.message[: 4 * MAX_QUOTE] + "..."
        }
