"""The whole integer part on fixed inputs, recorded bit for bit (tests/unit/data/queue_plan_golden.json): repair,
pool closing, instance moves, the best split, the split by load and the plan's figures. A speed-up of any of them
must give the same plans, exactly (issue 16 item 5; test_queue_integer_golden covers closing and the split alone).

The inputs are test_queue_repair_golden's synthetic relaxation outputs (nodes with 1-4 cores or none), with
every node given 4 cores in a third variant so that instance moves to idle cores happen. Floats are compared
exactly (JSON keeps a float's repr). Regenerate only on purpose, from the code whose plans are the reference:
``python -m tests.unit.test_queue_plan_golden``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from solver.queue_close_fast import close_pools_fast
from solver.queue_model import QueueProblem
from solver.queue_move import move_instances
from solver.queue_plan import make_queue_plan, planned_queue, spread
from solver.queue_repair import repair
from solver.queue_split import best_split
from solver.queue_split_load import resplit_by_load
from tests.unit.test_queue_repair_golden import cases

GOLDEN = Path(__file__).parent / "data" / "queue_plan_golden.json"


def _with_cores(q: QueueProblem, cores: float) -> QueueProblem:
    """``q`` with every node declaring ``cores`` cores."""
    snap = q.base.snapshot
    nodes = tuple(dataclasses.replace(node, cores=cores) for node in snap.nodes)
    return dataclasses.replace(q, base=dataclasses.replace(q.base, snapshot=dataclasses.replace(snap, nodes=nodes)))


def record() -> dict[str, Any]:
    """Per case and variant: the steps each pass took, the final rates, caps and rejections, and the plan."""
    out = {}
    for s, q, x, rejected, n in cases():
        for variant, qq in (("drawn", q), ("four", _with_cores(q, 4.0))):
            pools = repair(qq, x, rejected, n)
            steps = [close_pools_fast(pools), move_instances(pools), best_split(pools), resplit_by_load(pools)]
            details = {"spread": spread(qq, pools), "planned_queue": planned_queue(qq, pools)}
            plan = make_queue_plan(qq, pools, "ipopt", "optimal", details)
            out[f"{s}/{variant}"] = {
                "steps": steps,
                "x": pools.x.tolist(),
                "cap": pools.cap.tolist(),
                "rejected": pools.rejected.tolist(),
                "shed": pools.shed,
                "plan": dataclasses.asdict(plan),
            }
    return out


def test_the_integer_part_gives_the_recorded_plans_exactly() -> None:
    want = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(record()))
    assert got.keys() == want.keys()
    assert sum(c["steps"][1] > 0 for c in want.values()) >= 5  # instance moves happen
    assert sum(c["steps"][0] > 0 for c in want.values()) >= 10 and sum(c["steps"][2] for c in want.values()) >= 10
    for key, case in want.items():
        assert got[key] == case, key


def test_the_record_check_fails_when_moves_are_switched_off(monkeypatch: Any) -> None:
    """Without instance moves some plans differ: the exact check sees it."""
    from solver import queue_move

    want = json.loads(GOLDEN.read_text())
    monkeypatch.setattr(queue_move, "ENABLED", False)
    got = json.loads(json.dumps(record()))
    assert any(got[key] != case for key, case in want.items())


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(record(), separators=(",", ":")) + "\n")
