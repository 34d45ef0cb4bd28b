"""bench/lifeguard_bench.py: each rule measured on the same simulated clusters, and its JSON."""

from __future__ import annotations

import json

import pytest

from bench.lifeguard_bench import RULES, main


def test_the_bench_measures_every_rule_and_the_liar_kills_only_under_the_rule_before(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--sizes", "5", "--seeds", "2", "--pause", "1.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["rule"] for r in out["crash"]} == set(RULES)
    for row in out["crash"]:
        assert 0 < row["first_p50"] <= row["all_p50"] < 15  # every crash detected, the first member no later
    attack = {(r["rule"], r["liar"]): r["runs_with_false_death"] for r in out["attack"]}
    assert attack[("proven", True)] == 0 and attack[("proven", False)] == 0 and attack[("before", False)] == 0
    assert attack[("before", True)] > 0  # the forged confirmers kill a stalled node under the rule before
    dead_lie = {r["rule"]: r["runs_with_false_death"] for r in out["dead_lie"]}
    assert dead_lie["proven"] == 0 and dead_lie["verify"] > 0  # one member's "it is dead" kills only under verify
