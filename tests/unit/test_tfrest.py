"""TF-Serving REST semantics, case by case from tensorflow/serving's own sources (cited per case).

Sources (tensorflow/serving at 9d981c5): H = model_servers/http_rest_api_handler_test.cc,
U = model_servers/http_rest_api_util.cc (the path regexes, ParseModelInfo), J = util/json_tensor.cc,
T = model_servers/tensorflow_model_server_test.py (*REST tests), M = servables/tensorflow/testdata/
saved_model_half_plus_two_2_versions_metadata.json, D = g3doc/api_rest.md, G = model_servers/get_model_status_impl.cc,
S = model_servers/server_core.cc (ServableRequestFromModelSpec, GetModelVersionForLabel; core/servable_handle.h's
ServableRequest::DebugString for Latest(name) / Specific(name, version)).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.models import MODELS
from agent.serving.tfrest import Route, handle, not_served

HPT = MODELS["half_plus_two"]


def call(method: str, path: str, body: Any = None, version: int = 123) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return handle(HPT, "half_plus_two", version, method, path, raw)


P = "/v1/models/half_plus_two"

# (source, method, path, body, expected status, expected body or a substring of the error)
CASES: list[tuple[str, str, str, Any, int, Any]] = [
    ("H UnsupportedApiCalls", "GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
    ("H UnsupportedApiCalls", "POST", "/v1/foo", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "GET", "/v1/models", None, 400, "Missing model name"),
    ("H UnsupportedApiCalls", "GET", "/v1/models/debug/model_name", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "POST", "/v1/models", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "GET", "/v1/models/foo:predict", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "GET", "/v1/models/foo/version/50:predict", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "POST", "/v1/models/foo/version/50:regress", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "POST", "/v1/models/foo/versions/HELLO:regress", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls (int64 overflow)", "POST", "/v1/models/foo/versions/18446744073709551615:regress",
     None, 400, "Failed to convert version: 18446744073709551615 to numeric."),
    ("U a version past int()'s 4,300 digits (review26c: ValueError, a 500 with a traceback)", "GET",
     "/v1/models/foo/versions/" + "9" * 4301, None, 400, "Failed to convert version: 999"),
    ("H UnsupportedApiCalls", "POST", "/v1/models/foo/metadata", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "POST", "/v1/models/foo/label/some_label:regress", None, 400, "Malformed request"),
    ("H UnsupportedApiCalls", "POST", "/v1/models/foo/versions/50/labels/some_label:regress", None, 400,
     "Malformed request"),
    ("H UnsupportedApiCalls", "POST", "/v1/models/foo/versions/some_label:regress", None, 400, "Malformed request"),
    ("U dispatch: a wrong method on a valid path", "DELETE", P, None, 400, "Malformed request: DELETE"),
    ("U dispatch: GET on :predict", "GET", P + ":predict", None, 400, "Malformed request"),
    ("H PredictModelNameVersionErrors", "POST", "/v1/models/foo:predict", {"instances": [1]}, 404,
     "Servable not found for request: Latest(foo)"),
    ("H PredictModelNameVersionErrors", "POST", P + "/versions/50:predict", {"instances": [1]}, 404,
     "Servable not found for request: Specific(half_plus_two, 50)"),
    ("G GetModelStatus: an unknown model", "GET", "/v1/models/foo", None, 404,
     "Could not find any versions of model foo"),
    ("G GetModelStatus: an unknown model, a label not read", "GET", "/v1/models/foo/labels/x", None, 404,
     "Could not find any versions of model foo"),
    ("G GetModelStatus: a version not served", "GET", P + "/versions/50", None, 404,
     "Could not find version 50 of model half_plus_two"),
    ("S GetServableHandle: an unknown model's version", "GET", "/v1/models/foo/versions/3/metadata", None, 404,
     "Servable not found for request: Specific(foo, 3)"),
    ("S GetModelVersionForLabel: an unknown model's label", "POST", "/v1/models/foo/labels/x:predict",
     {"instances": [1]}, 400, "Unrecognized servable version label: x"),
    ("H PredictRequestErrors", "POST", P + ":predict", None, 400, "JSON Parse error: The document is empty"),
    ("H PredictRequestErrors", "POST", P + ":predict", b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    ("H PredictRequestErrors", "POST", P + ":predict", {"instances": ["x", "y"]}, 400,
     "not of expected type: float"),
    ("H PredictRequestErrors", "POST", P + "/labels/nonexistent:predict", {"instances": [1]}, 400,
     "Unrecognized servable version label"),
    ("H PredictRequestErrors", "POST", P + ":predict", {"signature_name": 100}, 400,
     "'signature_name' key must be a string value."),
    ("H Predict", "POST", P + ":predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, 200,
     {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    ("H Predict (version)", "POST", P + "/versions/123:predict", {"instances": [1.0, 2.0]}, 200,
     {"predictions": [2.5, 3.0]}),
    ("H Predict (signature)", "POST", P + ":predict", {"signature_name": "serving_default", "instances": [3.0, 4.0]},
     200, {"predictions": [3.5, 4.0]}),
    ("H Predict (columnar)", "POST", P + ":predict", {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
     200, {"outputs": [3.5, 4.0]}),
    ("H Regress", "POST", P + ":regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}, 200,
     {"results": [42.0]}),
    ("H Classify", "POST", P + ":classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}, 200,
     {"results": [[["", 12.0]]]}),
    ("T testPredictREST", "POST", P + ":predict", {"instances": [2.0, 3.0, 4.0]}, 200,
     {"predictions": [3.0, 3.5, 4.0]}),
    ("T testPredictColumnarREST", "POST", P + ":predict", {"inputs": [2.0, 3.0, 4.0]}, 200,
     {"outputs": [3.0, 3.5, 4.0]}),
    ("T testRegressREST", "POST", P + ":regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]},
     200, {"results": [3.0]}),
    ("T testClassifyREST", "POST", P + ":classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]},
     200, {"results": [[["", 3.0]]]}),
    ("T testGetStatusREST / H GetStatus", "GET", P, None, 200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}),
    ("H GetStatus (version)", "GET", P + "/versions/123", None, 200, {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}),
    ("J both keys", "POST", P + ":predict", {"instances": [1], "inputs": [1]}, 400,
     "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
    ("J neither key", "POST", P + ":predict", {"foo": 1}, 400, "Missing 'inputs' or 'instances' key"),
    ("J empty instances", "POST", P + ":predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("J instances not a list", "POST", P + ":predict", {"instances": 3}, 400,
     "Expecting 'instances' to be an list/array"),
    ("J ragged instances (AddInstanceItem)", "POST", P + ":predict", {"instances": [[1.0], [1.0, 2.0]]}, 400,
     "Expecting shape [1] but got: [2]"),
    ("J named rows", "POST", P + ":predict", {"instances": [{"x": 1.0}, {"x": 2.0}]}, 200,
     {"predictions": [2.5, 3.0]}),
    ("J named rows: wrong keys", "POST", P + ":predict", {"instances": [{"z": 1.0}]}, 400, "keys must be equal to: x"),
    ("J rows mixing objects and values", "POST", P + ":predict", {"instances": [{"x": 1.0}, 2.0]}, 400,
     "Expecting object but got list at item 1"),
    ("J named inputs", "POST", P + ":predict", {"inputs": {"x": [1.0]}}, 200, {"outputs": [2.5]}),
    ("J missing named input", "POST", P + ":predict", {"inputs": {"z": [1.0]}}, 400,
     "Missing named input: x in 'inputs' object."),
    ("H GetInfoMap: unknown signature", "POST", P + ":predict", {"signature_name": "nope", "instances": [1.0]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("J top level not an object", "POST", P + ":predict", [1, 2], 400, "Is not object"),
    ("U (?i) regex, exact method dispatch", "POST", "/V1/MODELS/half_plus_two:PREDICT", {"instances": [1]}, 400,
     "Malformed request"),
    ("U (?i) regex", "POST", "/V1/Models/half_plus_two:predict", {"instances": [1.0]}, 200, {"predictions": [2.5]}),
]  # fmt: skip


@pytest.mark.parametrize(("source", "method", "path", "body", "status", "expected"), CASES, ids=[c[0] for c in CASES])
def test_tf_serving_case(source: str, method: str, path: str, body: Any, status: int, expected: Any) -> None:
    got_status, got = call(method, path, body)
    assert got_status == status, (source, got)
    if isinstance(expected, str):
        assert set(got) == {"error"} and expected in got["error"], (source, got)
    else:
        assert got == expected, source


def test_metadata_has_the_shape_of_tf_servings_half_plus_two_metadata_file() -> None:
    """M: signature names, tensor names, dims [-1, 1], method names and ``"defaults": {}``."""
    status, meta = call("GET", P + "/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"regress_x2_to_y3", "serving_default", "classify_x_to_y", "classify_x2_to_y3",
                         "regress_x_to_y2", "regress_x_to_y"}  # fmt: skip
    default = defs["serving_default"]
    assert default == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""},
                   {"size": "1", "name": ""}], "unknown_rank": False}, "name": "x:0"}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1", "name": ""},
                    {"size": "1", "name": ""}], "unknown_rank": False}, "name": "y:0"}},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }  # fmt: skip
    assert defs["classify_x_to_y"]["inputs"]["inputs"]["dtype"] == "DT_STRING"


def test_declared_shapes_are_not_enforced_like_tf_serving() -> None:
    """H Predict sends [[1, 2], [3, 4]] to a model whose input is declared [-1, 1] and expects 200."""
    assert call("POST", P + ":predict", {"instances": [[1, 2], [3, 4]]})[0] == 200


def test_digits_model_answers_ten_probabilities_per_instance() -> None:
    pytest.importorskip("sklearn")
    from agent import digits

    if not digits.weights_path().exists():
        pytest.fail(f"digits weights not built at {digits.weights_path()} (scripts/bootstrap.sh builds them)")
    images, labels = digits.heldout_set()
    status, out = handle(MODELS["digits"], "digits", 1, "POST", "/v1/models/digits:predict", json.dumps(
        {"instances": images[:50]}).encode())  # fmt: skip
    assert status == 200
    probs = out["predictions"]
    assert all(len(p) == 10 and abs(sum(p) - 1) < 1e-9 for p in probs)
    correct = sum(max(range(10), key=p.__getitem__) == y for p, y in zip(probs, labels[:50], strict=True))
    assert correct >= 45
    status, bad = handle(MODELS["digits"], "digits", 1, "POST", "/v1/models/digits:predict", b'{"instances": [[1, 2]]}')
    assert status == 400 and "64 pixel values" in bad["error"]


@pytest.mark.parametrize(
    ("route", "status", "message"),
    [
        (Route("predict", "nosuch", 3), 404, "Servable not found for request: Specific(nosuch, 3)"),
        (Route("metadata", "nosuch"), 404, "Servable not found for request: Latest(nosuch)"),
        (Route("classify", "nosuch", label="canary"), 400, "Unrecognized servable version label: canary"),
        (Route("status", "nosuch", 3), 404, "Could not find version 3 of model nosuch"),
        (Route("status", "nosuch", label="canary"), 404, "Could not find any versions of model nosuch"),
    ],
)
def test_a_model_not_served_gets_tf_servings_error_for_its_request(route: Route, status: int, message: str) -> None:
    """review26a L3: the agent answered a model outside its catalogue ``Latest(nosuch)`` whatever the request named;
    TF-Serving names the version (``Specific``), fails an unknown label, and answers a status request from its
    state monitor. The agent's proxy and the stand-in both take ``not_served``."""
    error = not_served(route)
    assert (error.status, error.message) == (status, message)
