"""Per-agent CPU and RSS against cluster size, now and before, from a ``bench/membership_bench.py --json`` run.

The membership bench measures, for each size N, a follower's mean CPU (CPU-s/s, agent process tree, idle),
the leader's, and a follower's RSS (median over followers, process tree); with ``--before-rev`` it measures
the same for an older revision in the same run. This draws both codes side by side: CPU on the left (with
issue #13's fit of the all-to-all heartbeats the SWIM membership replaced, for scale), RSS on the right
(with the issue's ~80 MB goal for a follower with no models; the README's MB have always been MiB, 2**20
bytes). ``--board FILE`` adds the RSS of a second run whose agents ran in a virtualenv with only the agent's
extra installed (as on a board: no dev tools, whose rich and trio httpx/httpcore import when present).

    .venv/bin/python bench/membership_bench.py --sizes 5,10,25 --before-rev REV --before-sizes 5,10,25 \\
        --json > run.json
    .venv/bin/python bench/agent_resources_plot.py run.json [--board run2.json] --out docs/img/agent_resources.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FOLLOWER_GOAL_MB = 80.0


def rows(figures: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The sizes of one code (``now`` or ``before``) that converged, smallest first."""
    return sorted((r for r in figures.get(key, []) if "failed" not in r), key=lambda r: int(r["n"]))


def series(figures: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """code -> column -> values per size: n, follower_cpu, leader_cpu, follower_rss_mb (MiB), load."""
    out: dict[str, dict[str, list[float]]] = {}
    for code in ("now", "before"):
        rs = rows(figures, code)
        cols = ("n", "follower_cpu", "leader_cpu", "follower_rss_mb", "load_avg_1m")
        out[code] = {c: [float(r[c]) if r.get(c) is not None else float("nan") for r in rs] for c in cols}
    return out


def plot(figures: dict[str, Any], path: Path, board: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = series(figures)
    before = figures.get("before_rev") or "before"
    fig, (cpu, rss) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for code, label, style, color in (("now", "now", "o-", "C0"), ("before", f"before ({before})", "s--", "C1")):
        if s[code]["n"]:
            cpu.plot(s[code]["n"], s[code]["follower_cpu"], style, color=color, label=f"{label}: follower")
            cpu.plot(s[code]["n"], s[code]["leader_cpu"], style, color=color, alpha=0.4, label=f"{label}: leader")
            rss.plot(s[code]["n"], s[code]["follower_rss_mb"], style, color=color, label=f"{label}: follower")
    if board is not None and series(board)["now"]["n"]:
        b = series(board)["now"]
        rss.plot(b["n"], b["follower_rss_mb"], "^-", color="C2", label="now, only the agent's extra installed")
    ns = sorted(set(s["now"]["n"]) | set(s["before"]["n"])) or [5.0, 25.0]
    cpu.plot(ns, [0.011 + 0.0055 * (n - 1) for n in ns], ":", color="grey", label="all-to-all heartbeats (fit)")
    rss.axhline(FOLLOWER_GOAL_MB, color="grey", ls=":", label="goal: ~80 MB (drawn at 80 MiB)")
    cpu.set_ylim(0, None)
    cpu.set(xlabel="agents in the cluster", ylabel="CPU-seconds per second per agent", title="Per-agent CPU (idle)")
    rss.set(xlabel="agents in the cluster", ylabel="MiB (agent + children)", title="Follower RSS, no models")
    rss.set_ylim(0, None)
    for ax in (cpu, rss):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("figures", type=Path, help="the JSON that bench/membership_bench.py --json printed")
    ap.add_argument("--board", type=Path, help="a second run's JSON, agents with only the agent's extra installed")
    ap.add_argument("--out", type=Path, default=Path("docs/img/agent_resources.png"), help="PNG to write")
    ap.add_argument("--json", action="store_true", help="print the plotted series as JSON instead of a table")
    args = ap.parse_args()
    figures = json.loads(args.figures.read_text())
    board = json.loads(args.board.read_text()) if args.board else None
    plot(figures, args.out, board)
    s = series(figures)
    if board is not None:
        s["board"] = series(board)["now"]
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{'code':<7} {'agents':>6} {'follower CPU':>13} {'leader CPU':>11} {'follower RSS':>13} {'load':>5}")
    for code, cols in s.items():
        for i, n in enumerate(cols["n"]):
            print(f"{code:<7} {n:>6.0f} {cols['follower_cpu'][i]:>13.4f} {cols['leader_cpu'][i]:>11.4f} "
                  f"{cols['follower_rss_mb'][i]:>9.1f} MiB {cols['load_avg_1m'][i]:>5.1f}")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
