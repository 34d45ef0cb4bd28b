"""bench/ipopt_options.py (issue 16 item 5): it captures the R(S) problems queue_fast hands to Ipopt, measures
option sets on them against the reference form and leaves the solver's options as they were."""

from __future__ import annotations

import logging

from bench import ipopt_options
from solver import queue_model


def test_the_options_bench_measures_and_restores() -> None:
    """2 cores per node, one seed: problems captured; the current set reaches the reference optimum, a set
    that caps Ipopt at 3 iterations is flagged (not optimal, retried), and the options are restored."""
    before = dict(queue_model.IPOPT_NLP_COMPACT)
    problems = ipopt_options.capture(1, 2.0)[:3]
    assert problems and all(allowed.any() for _, _, allowed in problems)
    sets = ipopt_options.parse_sets([["capped", "max_iter=3"]])
    assert sets["capped"] == {"max_iter": 3} and next(iter(sets)) == "current"
    out = ipopt_options.measure(problems, sets, repeat=1)
    assert out["current"]["worst_gap"] <= 1e-6 and out["current"]["retries"] == out["current"]["not_optimal"] == 0
    assert out["capped"]["max_iterations"] <= 4 * (3 + 1) and out["capped"]["retries"] > 0  # 4 tries, each from 0
    assert before == queue_model.IPOPT_NLP_COMPACT
    assert not any(isinstance(h, ipopt_options._Counter) for h in logging.getLogger("solver.queue_model").handlers)
    assert ipopt_options.options_for({"mu_init": None})["tol"] == before["tol"]
    assert "mu_init" not in ipopt_options.options_for({"mu_init": None})
