"""peerserve/dispatch.py's endpoint rules: idle endpoints count as live 0, and p2c (issue 16, part 2)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from agent.errors import ConfigError
from agent.settings import load_settings
from bench.endpoint_rules_bench import CANDIDATES, one_rate
from peerserve.dispatch import DEFAULT_RULE, RULES, choose_endpoint, queue_score, spread_weights

EPS = [("a", "a1"), ("b", "b1")]
GRID = [(i + 0.5) / 40 for i in range(40)]


def counts(endpoints: list[tuple[str, str]], shares: dict[str, float], rule: str, **kw: object) -> Counter[str]:
    """Which URL takes the request over a 40 x 40 grid of the two draws."""
    got: Counter[str] = Counter()
    for u in GRID:
        for u2 in GRID:
            k = choose_endpoint(endpoints, shares, kw.get("planned"), kw.get("live"), (u, u2), rule)  # type: ignore[arg-type]
            got[endpoints[k][1] if k is not None else "-"] += 1
    return got


def test_an_idle_endpoint_counts_as_live_zero_not_as_plain_share() -> None:
    """The old quirk: a1 idle (absent from the in-flight table) kept its plain share 0.5 while b1 with one in
    flight got 0.5 x (1 + 3) / (1 + 1) = 1.0, so the busy endpoint outweighed the idle one."""
    weights = spread_weights(EPS, {"a": 0.5, "b": 0.5}, {"a": 3.0, "b": 3.0}, {"b1": 1})
    assert weights == [2.0, 1.0]  # idle: 0.5 x 4 / 1; busy: 0.5 x 4 / 2
    assert spread_weights(EPS, {"a": 0.5, "b": 0.5}, {"a": 3.0, "b": 3.0}, {"a1": 0, "b1": 1}) == weights
    for rule in RULES:
        got = counts(EPS, {"a": 0.5, "b": 0.5}, rule, planned={"a": 3.0, "b": 3.0}, live={"b1": 1})
        assert got["a1"] > got["b1"], rule


def test_p2c_keeps_the_plans_proportions_when_every_score_is_the_same() -> None:
    eps = [("a", "a1"), ("a", "a2"), ("b", "b1"), ("c", "c1")]
    shares = {"a": 0.5, "b": 0.375, "c": 0.125}
    want = {"a1": 400, "a2": 400, "b1": 600, "c1": 200}  # 1600 draws in the plan's proportions
    assert counts(eps, shares, "p2c", planned={}, live={}) == want  # all idle
    planned = {"a": 1.0, "b": 3.0, "c": 0.0}
    as_planned = {"a1": 1, "a2": 1, "b1": 3}  # every score (1 + live) / (1 + planned) = 1
    assert counts(eps, shares, "p2c", planned=planned, live=as_planned) == want
    assert counts(eps, shares, "p2c") == want  # no live table: the plan's weights alone


def test_p2c_takes_the_lower_queue_of_its_two_draws() -> None:
    shares, planned = {"a": 0.5, "b": 0.5}, {"a": 1.0, "b": 1.0}
    live = {"a1": 4}
    for u in GRID:
        for u2 in GRID:
            k = choose_endpoint(EPS, shares, planned, live, (u, u2), "p2c")
            weights = [w / queue_score(n, url, planned, live) ** 2 for w, (n, url) in zip([0.5, 0.5], EPS, strict=True)]
            drawn = {0 if u * sum(weights) < weights[0] else 1, 0 if u2 * sum(weights) < weights[0] else 1}
            assert k == (1 if 1 in drawn else 0)  # b1 (idle) whenever either draw finds it
    p2c = counts(EPS, shares, "p2c", planned=planned, live=live)["b1"]
    weighted = counts(EPS, shares, "weighted", planned=planned, live=live)["b1"]
    assert p2c > weighted > 800  # both prefer the shorter queue; p2c more strongly


def test_the_rules_bound_their_inputs() -> None:
    assert DEFAULT_RULE == "p2c"
    for rule in RULES:
        assert choose_endpoint([], {"a": 1.0}, {}, {}, (0.3, 0.7), rule) is None
        assert choose_endpoint(EPS, {}, {}, {}, (0.3, 0.7), rule) is None  # no share on any ready endpoint
        assert choose_endpoint(EPS, {"a": -1.0, "b": 1.0}, {}, {}, (0.1, 0.2), rule) == 1  # a negative share weighs 0
        for draws in ((-5.0, 7.0), (1.0, 1.0), (0.0, -0.0)):  # draws outside [0, 1) are clamped
            assert choose_endpoint(EPS, {"a": 0.5, "b": 0.5}, {}, {}, draws, rule) in (0, 1)
        huge = {"a1": 10**9, "b1": -3}  # a negative count reads as idle
        assert choose_endpoint(EPS, {"a": 0.5, "b": 0.5}, {"a": -2.0}, huge, (0.0, 0.0), rule) in (0, 1)
    assert queue_score("a", "a1", {"a": -2.0}, {"a1": -3}) == 1.0
    assert math.isclose(queue_score("a", "a1", {"a": 1.0}, {"a1": 3}), 2.0)
    with pytest.raises(ValueError, match="unknown endpoint rule"):
        choose_endpoint(EPS, {"a": 1.0}, {}, {}, (0.5, 0.5), "random")


def test_the_agent_setting_names_the_rule_and_refuses_others() -> None:
    assert load_settings(env={}, overrides={}).endpoint_rule == DEFAULT_RULE
    assert load_settings(env={"PEERSERVE_ENDPOINT_RULE": "weighted"}, overrides={}).endpoint_rule == "weighted"
    with pytest.raises(ConfigError) as err:
        load_settings(env={}, overrides={"endpoint_rule": "random"})
    assert err.value.key == "endpoint_rule"


def test_the_rules_bench_runs_every_candidate_on_the_same_arrivals() -> None:
    row = one_rate(1.0, "det", 10.0)
    assert set(row["rules"]) == set(CANDIDATES)
    assert len({o["requests"] for o in row["rules"].values()}) == 1
    for o in row["rules"].values():
        assert 0.0 <= o["departure"] <= 1.0
        assert o["p99_ratio"] == round(o["p99_ms"] / row["best_baseline"]["p99_ms"], 3)
    assert row["rules"]["p2c"]["departure"] < 0.05 < row["rules"]["jsq"]["departure"]  # jsq leaves the plan


def test_the_load_bench_runs_the_rule_before_p2c_as_a_placement_of_its_own() -> None:
    from bench.load_bench import ENDPOINT_RULES, PLACEMENTS

    assert set(ENDPOINT_RULES) <= set(PLACEMENTS) and set(ENDPOINT_RULES.values()) <= set(RULES)
    assert PLACEMENTS["queue-p99-weighted"] == PLACEMENTS["queue-p99"]  # the same plan, the other rule
    for name in ENDPOINT_RULES.values():
        assert load_settings(env={}, overrides={"endpoint_rule": name}).endpoint_rule == name
