"""bench/queue_price_sim.py: its clipped wait is the integer objective's, and with solver.queue_sched's crowded nodes
off it finds the plan that pays for the clip (25 x 5, seed 2, 2 cores: a pool simulated far above its figure)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.queue_bench import with_cores
from bench.queue_price_sim import clipped_wait, equal_share_load, one_plan
from solver import queue_sched
from solver.problem import Mode, build_problem
from solver.queue_close import integer_objective
from solver.queue_fast import solve_nlp_fast
from solver.queue_model import build_queue_problem
from solver.queue_plan import integer_part
from solver.simulate import thesis_instance


def test_the_clipped_wait_is_the_integer_objectives() -> None:
    q = build_queue_problem(build_problem(with_cores(thesis_instance(25, 5, 2), 2.0), Mode.MODE2))
    pools, _ = integer_part(q, solve_nlp_fast(q))
    p, counts = q.base, pools.counts()
    rest = float((pools.x * p.cost).sum()) + pools.penalty * float(pools.rejected.sum())
    rest += q.instance_cost * float(np.maximum(counts - p.free, 0).sum())
    assert rest + float(clipped_wait(pools).sum()) == pytest.approx(integer_objective(pools), rel=1e-12)
    assert equal_share_load(pools).max() > q.rho_max  # a pool past its equal share: the clip is at work


def test_with_crowded_nodes_off_the_plan_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_sched, "CROWDED", False)
    found = one_plan(with_cores(thesis_instance(25, 5, 2), 2.0), "1", 2000.0, seed=3)
    assert found is not None and found["pools_past"] >= 1 and found["objective_vs_relaxation"] < -0.05
    assert max(found["sim_over_by_load"]) > 2.0  # simulated far above both figures (they agree on that pool)
    assert found["wait_sim"] > 1.1 * found["wait_by_load"]


def test_a_plan_with_no_pool_past_its_equal_share_is_skipped() -> None:
    assert one_plan(thesis_instance(25, 5, 2), "1", 100.0, seed=0) is None  # no cores: every pool within rho_max
