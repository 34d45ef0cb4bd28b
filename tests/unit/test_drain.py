"""agent.decisions.drain_stops: a healthy server the plan drops leaves endpoint answers before it stops."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.decisions import Start, Stop, drain_stops

GONE = Stop("i1", "m", "not desired")
EXTRA = Stop("i2", "m", "more than desired")
DEAD = Stop("i3", "m", "exited")
STUCK = Stop("i4", "m", "not ready in time")


def test_a_dropped_server_drains_first_and_stops_after_the_drain() -> None:
    now_steps, draining = drain_stops([GONE, EXTRA, Start("m")], {}, 10.0, 3.0)
    assert now_steps == [Start("m")] and draining == {"i1": 10.0, "i2": 10.0}
    now_steps, draining = drain_stops([GONE, EXTRA], draining, 12.9, 3.0)
    assert now_steps == [] and draining == {"i1": 10.0, "i2": 10.0}
    now_steps, draining = drain_stops([GONE, EXTRA], draining, 13.0, 3.0)
    assert now_steps == [GONE, EXTRA] and draining == {"i1": 10.0, "i2": 10.0}  # hidden while they stop
    assert drain_stops([], draining, 14.0, 3.0) == ([], {})  # gone


def test_exited_and_stuck_servers_stop_at_once_and_no_drain_means_no_wait() -> None:
    """Stopping now; still left out of endpoint answers until they are gone."""
    assert drain_stops([DEAD, STUCK], {}, 0.0, 3.0) == ([DEAD, STUCK], {"i3": 0.0, "i4": 0.0})
    assert drain_stops([GONE], {}, 0.0, 0.0) == ([GONE], {"i1": 0.0})


def test_a_server_wanted_again_leaves_the_drain() -> None:
    _, draining = drain_stops([GONE], {}, 0.0, 3.0)
    assert drain_stops([], draining, 1.0, 3.0) == ([], {})  # desired again: no stop step, no drain


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=20), st.floats(0.1, 5.0))
def test_no_healthy_server_stops_before_it_drained(times: list[float], drain: float) -> None:
    """Whatever the reconcile rounds' times, a dropped server stops only drain_s after it began draining."""
    draining: dict[str, float] = {}
    started: float | None = None
    for now in sorted(times):
        steps, draining = drain_stops([GONE], draining, now, drain)
        started = draining.get("i1", started)
        assert "i1" in draining  # never in an endpoint answer once its stop is decided
        if steps:
            assert started is not None and now - started >= drain
            return


def test_an_outdated_server_drains_before_it_stops() -> None:
    """review12f F2: a server replaced after an upgrade is healthy: it leaves endpoint answers before it stops."""
    outdated = Stop("i5", "m", "outdated")
    assert drain_stops([outdated], {}, 0.0, 3.0) == ([], {"i5": 0.0})
    assert drain_stops([outdated], {"i5": 0.0}, 3.0, 3.0) == ([outdated], {"i5": 0.0})
