"""Where the relaxation's time goes where nodes declare cores, and its floor (issue 16 item 5).

The thesis-size solves of bench/queue_bench.py (``SIZES`` x ``--seeds`` x both modes, each node given ``--cores``)
are solved with the queue objective and the thesis LP in the same run. Inside the relaxation
(``details.relaxation_ms``: solver.queue_fast with solver.queue_warm on the binding nodes) the CPU time is split,
by timers put around the compiled calls from outside the solver (this bench only):

* ``highs``: HiGHS's ``run`` in the column generation (solver.queue_dual);
* ``ipopt``: Ipopt's ``solve`` less the Python callbacks it calls (Ipopt, MUMPS and cyipopt's wrapper), plus
  the ``cyipopt.Problem`` it is built on;
* ``callbacks``: the NLP's Python callbacks (objective, gradient, constraints, Hessian);
* ``python``: the rest (the closed form, the column generation's bounds and load columns, the warm start).

Per row the medians over the seeds; the summary gives, over the thesis's sizes, the median of relaxation / LP and
of (highs + ipopt) / LP: what the relaxation would take against the LP were every line of Python free (its
floor with this design: HiGHS's column generation, then Ipopt warm from it).

    .venv/bin/python bench/relax_floor_bench.py [--seeds N] [--cores N [N ...]] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.queue_bench import SIZES, cpu_ms, with_cores
from solver import queue_dual, queue_model
from solver.api import solve
from solver.fastlp import tune_solver_process
from solver.simulate import thesis_instance

PARTS = ("highs", "ipopt", "callbacks", "python")
CALLBACKS = ("objective", "gradient", "constraints", "jacobian", "hessian", "intermediate")
SPENT: defaultdict[str, float] = defaultdict(float)  # CPU seconds per part while the timers are in


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its CPU time added to ``SPENT[label]``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.process_time() - start

    return wrapper


class _TimedHighs:
    """A HiGHS model whose ``run`` is timed; every other call passes through."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.run = _timed("highs", model.run)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@contextmanager
def timers() -> Iterator[None]:
    """Put the timers around HiGHS's runs, Ipopt's problem and solve, and the NLP's callbacks; take them out."""
    import cyipopt

    lp_init, problem = queue_dual._Lp.__init__, cyipopt.Problem
    saved = {name: getattr(queue_model._Callbacks, name) for name in CALLBACKS}

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        lp_init(self, *args, **kwargs)
        self.h = _TimedHighs(self.h)

    class TimedProblem(problem):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _timed("ipopt", super().__init__)(*args, **kwargs)

        def solve(self, *args: Any, **kwargs: Any) -> Any:
            return _timed("ipopt", super().solve)(*args, **kwargs)

    queue_dual._Lp.__init__ = init  # type: ignore[method-assign]
    cyipopt.Problem = TimedProblem
    for name, fn in saved.items():
        setattr(queue_model._Callbacks, name, _timed("callbacks", fn))
    try:
        yield
    finally:
        queue_dual._Lp.__init__ = lp_init  # type: ignore[method-assign]
        cyipopt.Problem = problem
        for name, fn in saved.items():
            setattr(queue_model._Callbacks, name, fn)


def split(snapshot: Any, mode: str) -> dict[str, float]:
    """One queue solve's relaxation ms and its parts (ms): the callbacks run inside Ipopt's solve, so Ipopt's
    own share is its time less theirs."""
    SPENT.clear()
    with timers():
        plan = solve(snapshot, mode=mode, objective="queue")
    relaxation = float(plan.details["relaxation_ms"])
    parts = {key: 1000.0 * SPENT[key] for key in ("highs", "ipopt", "callbacks")}
    parts["ipopt"] -= parts["callbacks"]
    parts["python"] = relaxation - sum(parts.values())
    return {"relaxation": relaxation, **parts, "iterations": float(plan.details.get("iterations", 0))}


def measure(seeds: int, cores: float) -> list[dict[str, Any]]:
    """One row per (size, mode): the LP's ms and the relaxation's parts (medians over the seeds)."""
    rows = []
    for r, n in SIZES:
        snaps = [with_cores(thesis_instance(r, n, s), cores or None) for s in range(seeds)]
        for mode in "12":
            lp = statistics.median(cpu_ms(s, "thesis", mode) for s in snaps)
            splits = [split(s, mode) for s in snaps]
            row: dict[str, Any] = {"size": f"{r} x {n}", "mode": mode, "lp_ms": lp}
            for key in ("relaxation", *PARTS, "iterations"):
                row[key] = statistics.median(x[key] for x in splits)
            row["floor"] = statistics.median((x["highs"] + x["ipopt"]) / lp for x in splits)
            rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the rows: relaxation / LP, each part / LP, and the floor (HiGHS + Ipopt) / LP."""
    out = {"relaxation_ratio": statistics.median(r["relaxation"] / r["lp_ms"] for r in rows)}
    for key in PARTS:
        out[f"{key}_ratio"] = statistics.median(r[key] / r["lp_ms"] for r in rows)
        out[f"{key}_share"] = sum(r[key] for r in rows) / sum(r["relaxation"] for r in rows)
    out["floor_ratio"] = statistics.median(r["floor"] for r in rows)
    return out


def print_table(rows: list[dict[str, Any]]) -> None:
    head = "".join(f"{p:>10}" for p in PARTS)
    print(f"{'size':<10}{'mode':>5}{'LP ms':>7}{'relax':>7}{'/ LP':>6}{head}  floor/LP")
    for r in rows:
        parts = "".join(f"{r[p]:>10.2f}" for p in PARTS)
        print(
            f"{r['size']:<10}{r['mode']:>5}{r['lp_ms']:>7.2f}{r['relaxation']:>7.2f}"
            f"{r['relaxation'] / r['lp_ms']:>6.2f}{parts}{r['floor']:>10.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="instances per size (default 3)")
    ap.add_argument("--cores", type=float, nargs="+", default=[2.0, 1.0], metavar="N",
                    help="cores per node of the snapshots (0: none); one table each (default 2 1)")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    tune_solver_process()
    warm = with_cores(thesis_instance(25, 10, 0), 2.0)
    for objective in ("thesis", "queue"):
        solve(warm, objective=objective)
    runs = [(c, measure(args.seeds, c)) for c in args.cores]
    if args.json:
        out = [{"cores": c, "rows": rows, "summary": summary(rows)} for c, rows in runs]
        print(json.dumps({"by_cores": out, "load_average": os.getloadavg()}, indent=1))
        return
    for c, rows in runs:
        print(f"== {'no cores' if not c else f'{c:g} cores per node'} (ms, medians over the seeds)")
        print_table(rows)
    for c, rows in runs:
        s = summary(rows)
        shares = ", ".join(f"{p} {100 * s[f'{p}_share']:.0f} %" for p in PARTS)
        print(
            f"[{c:g} cores] relaxation / LP median {s['relaxation_ratio']:.2f}; of the relaxation: {shares}; "
            f"(HiGHS + Ipopt) / LP median {s['floor_ratio']:.2f} (the floor with no Python at all)"
        )
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
