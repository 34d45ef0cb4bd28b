"""Snapshot parsing: every bad input raises SnapshotError naming the field."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from solver import Snapshot, SnapshotError


def test_example_round_trips(example_dict: dict[str, Any]) -> None:
    s = Snapshot.from_dict(example_dict)
    assert s.node_ids == ["n1"]
    assert s.requests[0].rtt_ms == {"n1": 2.0}
    again = Snapshot.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s


def _broken(example: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(example)
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()

BAD_CASES = [
    (["requests", 0, "model"], "ghost", "requests[0].model", "unknown model"),
    (["requests", 0, "rtt_ms", "n1"], -1.0, "requests[0].rtt_ms.n1", "negative"),
    (["requests", 0, "exec_ms", "n1"], math.nan, "requests[0].exec_ms.n1", "finite"),
    (["requests", 0, "exec_ms", "n1"], math.inf, "requests[0].exec_ms.n1", "finite"),
    (["requests", 0, "rtt_ms", "n1"], "fast", "requests[0].rtt_ms.n1", "number"),
    (["requests", 0, "rtt_ms", "n1"], _DELETE, "requests[0].rtt_ms", "missing a value for node 'n1'"),
    (["requests", 0, "rtt_ms", "n9"], 1.0, "requests[0].rtt_ms.n9", "unknown node"),
    (["nodes"], [], "nodes", "at least one node"),
    (["models"], [], "models", "at least one model"),
    (["nodes", 0, "mem_total_mb"], _DELETE, "nodes[0].mem_total_mb", "missing"),
    (["nodes", 0, "mem_available_mb"], 5000, "nodes[0].mem_available_mb", "exceeds"),
    (["nodes", 0, "compute"], True, "nodes[0].compute", "number"),
    (["nodes", 0, "instances", "m1"], -2, "nodes[0].instances.m1", "non-negative integer"),
    (["nodes", 0, "instances", "zz"], 1, "nodes[0].instances.zz", "unknown model"),
    (["nodes", 0, "id"], "", "nodes[0].id", "non-empty string"),
    (["models", 0, "mem_mb"], -5, "models[0].mem_mb", "negative"),
    (["requests"], {"a": 1}, "requests", "JSON list"),
]


@pytest.mark.parametrize(("path", "value", "field", "words"), BAD_CASES)
def test_bad_input_names_the_field(
    example_dict: dict[str, Any], path: list[Any], value: Any, field: str, words: str
) -> None:
    with pytest.raises(SnapshotError) as err:
        Snapshot.from_dict(_broken(example_dict, path, value))
    assert err.value.field == field
    assert words in str(err.value)


def test_duplicate_node_ids(example_dict: dict[str, Any]) -> None:
    d = copy.deepcopy(example_dict)
    d["nodes"].append(dict(d["nodes"][0]))
    with pytest.raises(SnapshotError) as err:
        Snapshot.from_dict(d)
    assert err.value.field == "nodes[1].id" and "duplicate" in str(err.value)


def test_duplicate_model_names(example_dict: dict[str, Any]) -> None:
    d = copy.deepcopy(example_dict)
    d["models"].append(dict(d["models"][0]))
    with pytest.raises(SnapshotError) as err:
        Snapshot.from_dict(d)
    assert err.value.field == "models[1].name"


@pytest.mark.parametrize("data", [[], "x", None, 3])
def test_not_an_object(data: Any) -> None:
    with pytest.raises(SnapshotError) as err:
        Snapshot.from_dict(data)
    assert err.value.field == "$"


def test_no_requests_is_valid(example_dict: dict[str, Any]) -> None:
    d = copy.deepcopy(example_dict)
    del d["requests"]
    assert Snapshot.from_dict(d).requests == ()
