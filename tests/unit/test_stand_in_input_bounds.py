"""What a client's JSON can make the stand-in model server compute (agent/serving/tfrest.py, agent/models.py):
input that used to kill its handler thread (a 502 through the agent, a traceback in its log per request) is a
400 before or instead of the model; values, nesting and quoted input are bounded (review11a, finding 1)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.models import MODELS, Signature, Tensor, TinyModel
from agent.serving.tfrest import MAX_DEPTH, MAX_QUOTE, MAX_VALUES, deeper_than, handle, values_at_most

P = "/v1/models/{}:predict"


def predict(body: bytes | str, model: str = "half_plus_two") -> tuple[int, Any]:
    raw = body.encode() if isinstance(body, str) else body
    return handle(MODELS[model], model, 1, "POST", P.format(model), raw)


def nested(depth: int) -> str:
    """{"instances": [...]} with ``depth`` arrays in all (the document object not counted)."""
    return '{"instances": ' + "[" * depth + "1" + "]" * depth + "}"


def test_nesting_past_the_bound_is_a_400_before_the_model_runs() -> None:
    # 600 deep: json.loads took it and the model's recursion overflowed; 5,000: json.loads itself raised
    for depth in (MAX_DEPTH, 600, 5000, 60_000):
        status, answer = predict(nested(depth))
        assert status == 400 and answer == {"error": f"JSON Parse error: nested more than {MAX_DEPTH} deep"}, depth
    status, answer = predict(nested(MAX_DEPTH - 1))  # the document object is the 64th level
    assert status == 200 and json.dumps(answer).count("[") == MAX_DEPTH - 1


def test_a_number_no_float_holds_is_a_400() -> None:
    status, answer = predict('{"instances": [' + "9" * 400 + "]}")  # float() raised OverflowError
    assert status == 400 and answer == {"error": "number too large for a float"}
    status, answer = predict('{"instances": [' + "9" * 5000 + "]}")  # past Python's 4,300 digits: a parse error
    assert status == 400 and answer["error"].startswith("JSON Parse error")


def test_the_xor_sigmoid_does_not_overflow() -> None:
    for a, b in ((-1e300, 0), (1e300, 0), (-1e300, -1e300), (1e300, 1e300), (-800, 800)):
        status, answer = predict(json.dumps({"instances": [[a, b]]}), "xor_mlp")  # math.exp(1e301) raised
        assert status == 200, (a, b, answer)
        (y,) = answer["predictions"][0]
        assert 0.0 <= y <= 1.0
    for a, b, want in ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)):  # still XOR
        assert round(predict(json.dumps({"instances": [[a, b]]}), "xor_mlp")[1]["predictions"][0][0]) == want


def test_values_past_the_bound_are_a_400_and_the_largest_body_within_it_is_served() -> None:
    most = MAX_VALUES - 2  # the document object and the instances array count too
    status, answer = predict(b'{"instances": [' + b"1," * (most - 1) + b"1]}")
    assert status == 200 and len(answer["predictions"]) == most
    status, answer = predict(b'{"instances": [' + b"1," * most + b"1]}")
    assert status == 400 and answer == {"error": f"JSON Parse error: more than {MAX_VALUES} values in one request"}
    status, _ = predict(b'{"instances": [' + b"[]," * most + b"[]]}")  # empty arrays: ~60 bytes each parsed
    assert status == 400


def test_an_error_quotes_at_most_a_bounded_part_of_the_request() -> None:
    # TF-Serving quotes the whole value; an 8 MiB string came back as up to ~50 MiB of escaped JSON
    for value in ["\u00e9" * 2**20, list(range(50_000)), {"k" * 10_000: 1}, [["x" * 5000] * 3]]:
        status, answer = predict(json.dumps({"instances": value, "inputs": 1}))
        assert status == 400 and len(answer["error"]) < MAX_QUOTE + 200, len(answer["error"])
        assert "..." in answer["error"]
    status, answer = predict(json.dumps({"signature_name": "s" * 2**20, "instances": [1]}))
    assert status == 400 and len(answer["error"]) <= 4 * MAX_QUOTE + 3
    status, answer = predict(json.dumps({"instances": [1, 2], "inputs": [3]}))  # a small value is quoted whole
    assert status == 400 and '{"instances":[1,2],"inputs":[3]}' in answer["error"]


def test_a_model_error_on_legal_json_is_a_400() -> None:
    # digits: sums of +-1e308 overflow to inf and NaN, never an exception; a 400-digit integer is a 400
    status, answer = predict(json.dumps({"instances": [[1e308] * 32 + [-1e308] * 32]}), "digits")
    assert status == 200 and len(answer["predictions"][0]) == 10, answer
    status, answer = predict('{"instances": [[' + ",".join(["9" * 400] * 64) + "]]}", "digits")
    assert status == 400 and answer == {"error": "number too large for a float"}
    # a model whose arithmetic fails on some input (1/x at 0): the client's 400, not a dead handler thread
    column = {"x": Tensor("x:0", (-1, 1))}
    reciprocal = TinyModel("inverse", {"serving_default": Signature("predict", column, column, lambda x: 1 / x)})
    assert handle(reciprocal, "inverse", 1, "POST", P.format("inverse"), b'{"instances": [4]}') == (
        200, {"predictions": [0.25]},
    )  # fmt: skip
    status, answer = handle(reciprocal, "inverse", 1, "POST", P.format("inverse"), b'{"instances": [0]}')
    assert status == 400 and "ZeroDivisionError" in answer["error"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=5),
    max_leaves=40,
)


def count_values(doc: Any) -> int:
    if isinstance(doc, list):
        return 1 + sum(count_values(v) for v in doc)
    if isinstance(doc, dict):
        return 1 + sum(count_values(v) for v in doc.values())
    return 1


def depth_of(doc: Any) -> int:
    if isinstance(doc, (list, dict)):
        items = doc.values() if isinstance(doc, dict) else doc
        return 1 + max((depth_of(v) for v in items), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(JSON, st.sampled_from([None, 2]))
def test_the_value_bound_never_counts_fewer_values_than_the_document_holds(doc: Any, indent: int | None) -> None:
    assert values_at_most(json.dumps(doc, indent=indent).encode()) >= count_values(doc)


@settings(max_examples=300, deadline=None)
@given(JSON, st.integers(0, 6))
def test_the_depth_check_agrees_with_a_recursive_count(doc: Any, limit: int) -> None:
    assert deeper_than(doc, limit) == (depth_of(doc) > limit)


def test_the_depth_check_takes_nesting_no_recursion_could() -> None:
    doc: Any = 1
    for _ in range(200_000):
        doc = [doc]
    assert deeper_than(doc, MAX_DEPTH) and not deeper_than(doc, 200_000)
