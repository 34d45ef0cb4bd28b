"""Pool closing and the best split on fixed inputs, recorded bit for bit (tests/unit/data/queue_integer_golden.json):
a speed-up of solver/queue_close*.py or solver/queue_split.py must give the same plans, exactly.

The inputs are test_queue_repair_golden's synthetic relaxation outputs (nodes with 1-4 cores or none),
repaired, then closed (solver.queue_close_fast) and re-split (solver.queue_split); each case also runs with
every node's cores removed (the no-cores case, where close_screen skips the core-sharing bound). Floats are
compared exactly (JSON keeps a float's repr). Regenerate only on purpose, from the code whose plans are
the reference: ``python -m tests.unit.test_queue_integer_golden``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from solver.queue_close import integer_objective
from solver.queue_close_fast import close_pools_fast
from solver.queue_repair import repair
from solver.queue_split import best_split
from tests.unit.test_queue_repair_golden import cases

GOLDEN = Path(__file__).parent / "data" / "queue_integer_golden.json"


def record() -> dict[str, Any]:
    """Per case and cores variant: pools closed, split kept, whole counts, rates, caps and the integer objective."""
    out = {}
    for s, q, x, rejected, n in cases():
        for variant, qq in (("cores", q), ("none", dataclasses.replace(q, base=_no_cores(q.base)))):
            pools = repair(qq, x, rejected, n)
            closed = close_pools_fast(pools)
            resplit = best_split(pools)
            out[f"{s}/{variant}"] = {
                "closed": closed,
                "resplit": resplit,
                "counts": pools.counts().tolist(),
                "x": pools.x.tolist(),
                "cap": pools.cap.tolist(),
                "objective": integer_objective(pools),
            }
    return out


def _no_cores(problem: Any) -> Any:
    """``problem`` with no node declaring cores (as the bench's ``--cores 0``)."""
    nodes = tuple(dataclasses.replace(node, cores=None) for node in problem.snapshot.nodes)
    return dataclasses.replace(problem, snapshot=dataclasses.replace(problem.snapshot, nodes=nodes))


def test_closing_and_split_give_the_recorded_plans_exactly() -> None:
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(record()))
    assert got.keys() == want.keys()
    assert sum(c["closed"] > 0 for c in want.values()) >= 10 and sum(c["resplit"] for c in want.values()) >= 10
    for key, case in want.items():
        assert got[key] == case, key


def test_the_record_check_fails_when_the_split_changes(monkeypatch: Any) -> None:
    """Frank-Wolfe run to its iteration limit instead of stopping at its duality gap moves the split by a
    little: the exact check sees it."""
    from solver import queue_split

    want = json.loads(GOLDEN.read_text())
    monkeypatch.setattr(queue_split, "GAP_STOP", False)
    got = json.loads(json.dumps(record()))
    assert any(got[key] != case for key, case in want.items())


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(record(), separators=(",", ":")) + "\n")
