"""`peerserve solve` and `peerserve simulate` as a user runs them: real process, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peerserve", *args], input=stdin, capture_output=True, text=True, timeout=300
    )


def test_solve_json_shape(tmp_path: Path, example_dict: dict[str, Any]) -> None:
    f = tmp_path / "snap.json"
    f.write_text(json.dumps(example_dict))
    out = run("solve", str(f), "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    for key in (
        "status",
        "objective_ms",
        "solve_ms",
        "assignments",
        "instances",
        "rejected",
        "actions",
        "feasible",
    ):
        assert key in plan
    assert plan["assignments"] == ["n1"]
    assert plan["objective_ms"] == 42.0
    assert plan["instances"] == {"n1": {"m1": 1}}
    assert plan["actions"] == [] and plan["feasible"] is True
    assert plan["first_call_ms"] > 0 and plan["solve_ms"] > 0  # warm solve and first call, apart


def test_solve_reads_stdin_and_prints_a_table(example_dict: dict[str, Any]) -> None:
    out = run("solve", "-", "--method", "milp", stdin=json.dumps(example_dict))
    assert out.returncode == 0, out.stderr
    assert "objective 42.0 ms" in out.stdout and "n1" in out.stdout


def test_solve_bad_snapshot_exits_2_naming_the_field(tmp_path: Path, example_dict: dict[str, Any]) -> None:
    example_dict["requests"][0]["exec_ms"]["n1"] = -3
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(example_dict))
    out = run("solve", str(f))
    assert out.returncode == 2
    assert "requests[0].exec_ms.n1" in out.stderr and "negative" in out.stderr
    assert out.stdout == ""


def test_solve_not_json_and_missing_file_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text("{nope")
    assert run("solve", str(f)).returncode == 2
    missing = run("solve", str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_unknown_method_is_a_usage_error(tmp_path: Path) -> None:
    out = run("solve", "x.json", "--method", "simplex")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_simulate_json_and_plots(tmp_path: Path) -> None:
    out = run("simulate", "--vary", "nodes", "--seeds", "1", "--json", "--plot", str(tmp_path))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    points = data["points"]
    assert set(data["first_call_ms"]) == {"ipopt-mode1", "ipopt-mode2", "iterative", "milp-mode1", "milp-mode2"}
    assert {p["method"] for p in points} == {
        "ipopt-mode1",
        "ipopt-mode2",
        "iterative",
        "milp-mode1",
        "milp-mode2",
    }
    assert sorted({p["nodes"] for p in points}) == [5, 10, 15, 20]
    assert all(p["requests"] == 25 and p["vary"] == "nodes" for p in points)
    for p in points:
        assert set(p) == {
            "vary",
            "requests",
            "nodes",
            "seed",
            "method",
            "objective",
            "solve_ms",
            "feasible",
            "rejected",
        }
        if p["method"] != "iterative":
            assert p["feasible"]
    assert (tmp_path / "objective_vs_nodes.png").stat().st_size > 1000
    assert (tmp_path / "solve_ms_vs_nodes.png").stat().st_size > 1000


def test_help_explains() -> None:
    out = run("--help")
    assert out.returncode == 0 and "solve" in out.stdout and "simulate" in out.stdout
    assert run().returncode == 2


def test_solve_objective_queue_shares_instances(tmp_path: Path) -> None:
    ids = ["n1", "n2"]
    snap = {
        "nodes": [{"id": n, "mem_available_mb": 9000, "mem_total_mb": 9000, "compute": 400} for n in ids],
        "models": [{"name": "m", "mem_mb": 100, "compute": 5, "throughput_rps": {"default": 400}}],
        "requests": [
            {
                "model": "m",
                "client": f"c{i}",
                "rate": 5,
                "rtt_ms": {"n1": 1 + i % 7, "n2": 3},
                "exec_ms": {"n1": 2, "n2": 2},
            }
            for i in range(60)
        ],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(snap))
    thesis = json.loads(run("solve", str(path), "--json").stdout)
    queue = json.loads(run("solve", str(path), "--json", "--objective", "queue").stdout)
    assert sum(sum(m.values()) for m in thesis["instances"].values()) == 60
    assert max(sum(m.values()) for m in queue["instances"].values()) <= 1
    assert len(queue["shares"]) == 60 and not queue["rejected"]


def test_solve_names_the_running_instances_a_mode1_plan_serves_none_with() -> None:
    """Mode 1 past the instance bound (tests/unit/data/queue_bound_mode1_running.json): the table lists n0's
    instance of m0 as idle running, and --json carries it in details.idle_running."""
    case = (Path(__file__).parent / "data" / "queue_bound_mode1_running.json").read_text()
    snap = json.dumps(json.loads(case)["snap"])
    out = run("solve", "-", "--objective", "queue", "--mode", "1", stdin=snap)
    assert out.returncode == 0, out.stderr
    assert "idle running (no traffic; Mode 1 eviction stops them): n0: m0x1" in out.stdout
    plan = json.loads(run("solve", "-", "--objective", "queue", "--mode", "1", "--json", stdin=snap).stdout)
    assert plan["details"]["idle_running"] == {"n0": {"m0": 1}}
    assert plan["instances"]["n0"] == {"m0": 1} and plan["actions"] == []
