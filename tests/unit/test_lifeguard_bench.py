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


def test_the_restart_mode_measures_the_gate_on_and_off_on_the_same_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    """``--restart`` (R3's gate, swim_proofs.RELAYED_GATE_S): the restarted node is within its gate at the crash
    only with the gate on, holds relayed proofs it does not count, and still declares the crash dead, as every
    other member does; a cluster started cold detects it with the gate on too."""
    assert main(["--restart", "--sizes", "5", "--seeds", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["gate_s"]: r for r in out["restart"]}
    assert set(rows) == {0.0, out["gate_s"]} and out["gate_s"] == 60.0
    assert rows[0.0]["gated_at_crash"] == 0 and rows[out["gate_s"]]["gated_at_crash"] == 2
    assert rows[0.0]["held_not_counted"] == 0 < rows[out["gate_s"]]["held_not_counted"]
    for row in out["restart"]:
        assert 0 < row["restarted_max"] < 15 and 0 < row["others_max"] < 15 and row["rejoin_max"] < 45
    assert all(0 < r["first_p50"] <= r["all_max"] < 15 for r in out["cold"]) and len(out["cold"]) == 2


def test_bad_sizes_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for sizes in ("five", "3", ""):
        with pytest.raises(SystemExit) as exc:
            main(["--restart", "--sizes", sizes])
        assert exc.value.code == 2 and "--sizes" in capsys.readouterr().err
