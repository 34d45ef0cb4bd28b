"""Pure parts of what operators see: request classification, bounded labels and windows, log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from agent.logs import REDACTED, LogContext, configure
from agent.telemetry import LATENCY_SAMPLES, LatencyWindow, StateCollector, classify, outcome_of

SECRET = "s3cret-cluster-token-0123456789"


def test_client_requests_are_classified_by_kind_model_and_protocol() -> None:
    assert classify("GET", "/services") == ("query", "_all", "http")
    assert classify("GET", "/services/resnet") == ("query", "resnet", "http")
    assert classify("POST", "/services/resnet/v1/models/resnet:predict") == ("inference", "resnet", "tfserving")
    assert classify("POST", "/services/resnet/v2/models/resnet/infer") == ("inference", "resnet", "oip")
    assert classify("POST", "/v1/models/resnet:predict") == ("inference", "resnet", "tfserving")
    assert classify("GET", "/v1/models/resnet") == ("inference", "resnet", "tfserving")
    assert classify("POST", "/v2/models/resnet/infer") == ("inference", "resnet", "oip")
    for other in ("/metrics", "/cluster", "/stats/node", "/control/desired", "/", "/v2/health/ready"):
        assert classify("GET", other) is None
    assert classify("POST", "/services/resnet") is None  # a 405, not a query


def test_outcomes_are_a_fixed_small_set() -> None:
    seen = {outcome_of(s) for s in range(100, 600)}
    assert seen == {"ok", "client_error", "unavailable", "no_capacity", "upstream_error", "error"}
    assert (outcome_of(200), outcome_of(404), outcome_of(503), outcome_of(507), outcome_of(502)) == (
        "ok", "client_error", "unavailable", "no_capacity", "upstream_error",
    )  # fmt: skip


def test_latency_window_is_bounded_in_models_and_samples() -> None:
    w = LatencyWindow(max_keys=3)
    for i in range(10):
        w.add(f"m{i}", "inference", 1000.0, 1.0)
    assert sorted(w.series(1000.0)) == ["m0", "m1", "m2"]
    for i in range(3 * LATENCY_SAMPLES):
        w.add("m0", "inference", 1000.0 + i / 100, float(i))
    assert sum(p[2] for p in w.series(1030.0)["m0"]["points"]) == LATENCY_SAMPLES


def test_latency_window_gives_p50_per_bin_and_prefers_inference() -> None:
    w = LatencyWindow()
    for ms in (1.0, 2.0, 30.0):
        w.add("a", "inference", 995.0, ms)
    w.add("a", "query", 995.0, 0.2)
    w.add("b", "query", 985.0, 4.0)
    w.add("b", "query", 500.0, 99.0)  # older than the span
    series = w.series(1000.0, span_s=300, bin_s=10)
    assert series["a"] == {"kind": "inference", "bin_s": 10, "points": [[-0.0, 2.0, 3]]}
    assert series["b"]["points"] == [[-10.0, 4.0, 1]]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield stream
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


def leaks(text: str) -> list[str]:
    """The check the service test runs on an agent's whole log: lines that carry the secret."""
    return [line for line in text.splitlines() if SECRET in line]


def test_json_lines_carry_node_term_model_and_never_the_token(log_stream: io.StringIO) -> None:
    ctx = LogContext("n1", lambda: 7, lambda: {"resnet", "yolo"}, [SECRET])
    configure("json", "info", ctx, log_stream)
    log = logging.getLogger("agent.test")
    log.info("started %s on port %d", "resnet", 8501)
    log.warning("bad header Bearer %s from client", SECRET)
    log.info("command for %s", "whatever", extra={"model": "yolo"})
    try:
        raise ValueError(f"token was {SECRET}")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [(x["node"], x["term"], x["model"]) for x in lines] == [
        ("n1", 7, "resnet"), ("n1", 7, None), ("n1", 7, "yolo"), ("n1", 7, None)
    ]  # fmt: skip
    assert lines[1]["msg"] == f"bad header Bearer {REDACTED} from client"
    assert "exc" in lines[3] and REDACTED in lines[3]["exc"]
    assert leaks(log_stream.getvalue()) == []


def test_the_leak_check_catches_the_token_when_redaction_is_off(log_stream: io.StringIO) -> None:
    ctx = LogContext("n1", lambda: 1, lambda: (), [SECRET], redact=False)
    configure("text", "info", ctx, log_stream)
    logging.getLogger("agent.test").warning("bad header Bearer %s", SECRET)
    assert len(leaks(log_stream.getvalue())) == 1


def test_text_lines_name_node_term_and_model(log_stream: io.StringIO) -> None:
    configure("text", "info", LogContext("n2", lambda: None, lambda: {"xor"}, []), log_stream)
    logging.getLogger("agent.test").info("stopped %s (pid %d)", "xor", 12)
    line = log_stream.getvalue().strip()
    assert line.endswith("INFO agent.test [node=n2 term=None model=xor] stopped xor (pid 12)")


def placement_gauges(placement: Any) -> dict[str, list[float]]:
    """The placement gauges a scrape gives for a node whose last summary is ``placement`` (no leader here)."""
    agent: Any = SimpleNamespace(last_placement=placement, leadership=None)
    return {m.name: [s.value for s in m.samples] for m in StateCollector(agent)._placement()}


@pytest.mark.parametrize(
    "placement",
    [{"objective_ms": "x", "solve_ms": [], "actions": 5, "rejected": "many", "at": {}},
     {"objective_ms": 10**400, "rejected": 10**400, "at": True, "actions": "abc"}, {}, None, []],
)  # fmt: skip
def test_the_placement_gauges_never_raise_on_an_odd_summary(placement: Any) -> None:
    """review26b F4: ``float()`` of a summary's ``"x"`` raised in the scrape (every /metrics answered 500). The wire
    refuses such a summary now (tests/unit/test_peer_auth.py); the reader does not trust it either."""
    gauges = placement_gauges(placement)
    assert gauges["peerserve_placement_objective_seconds"] == [] and gauges["peerserve_placement_last_actions"] == [0]
    assert gauges["peerserve_placement_last_rejected_requests"] == [0.0]
    gauges = placement_gauges({"objective_ms": 1500, "solve_ms": 2.5, "actions": [{}, {}], "rejected": 3, "at": 1.7e9})
    assert gauges["peerserve_placement_objective_seconds"] == [1.5] and gauges["peerserve_placement_last_solve_seconds"]
    assert gauges["peerserve_placement_last_actions"] == [2]
    assert gauges["peerserve_placement_last_rejected_requests"] == [3]
