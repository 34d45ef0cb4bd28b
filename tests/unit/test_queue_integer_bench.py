"""bench/queue_integer_bench.py's tries count (``--counts``) and solver switches (``--switch``)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import queue_integer_bench as bench
from solver import queue_close_fast, queue_move


def test_the_counts_add_up_and_the_wrapped_functions_come_back() -> None:
    originals = (queue_close_fast._try_close, queue_move._round, queue_move.move_instances)
    found = bench.measure("thesis", 1, 1, 2.0, counting=True)["counts"]
    assert (queue_close_fast._try_close, queue_move._round, queue_move.move_instances) == originals
    assert found["close_tries"] >= found["closed"] > 0
    assert found["move_tries"] >= found["move_better"] >= found["moved"] > 0  # 2 cores: moves tried and one kept
    assert found["move_tries"] >= found["move_rounds"] > 0


def test_a_switch_reaches_the_solver_and_changes_what_it_does(monkeypatch: Any) -> None:
    monkeypatch.setattr(queue_move, "ENABLED", queue_move.ENABLED)  # restored after the test
    bench.set_switches(["queue_move.ENABLED=False"])
    assert queue_move.ENABLED is False
    found = bench.measure("thesis", 1, 1, 2.0, counting=True)["counts"]
    assert found["move_rounds"] == found["moved"] == 0


@pytest.mark.parametrize(
    "item",
    ["queue_move.NOT_THERE=1", "queue_move.log=1", "queue_move.ENABLED=", "queue_move.ENABLED=no", "nomodule.X=1", "X"],
)
def test_a_switch_that_names_nothing_is_refused(item: str) -> None:
    with pytest.raises(SystemExit, match=r"want MODULE\.NAME=VALUE"):
        bench.set_switches([item])
