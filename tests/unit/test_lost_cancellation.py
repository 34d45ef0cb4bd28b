"""The agent's waits bounded with ``agent.aio.wait_for`` end on a cancellation that arrives as they complete.

With ``asyncio.wait_for`` (Python 3.10/3.11) each race below loses the cancellation: the membership and
reconcile loops, stopped by ``task.cancel()``, go round again for ever (the agent's stop awaits them: it hung),
and an exchange waiting for a slot with a peer takes the slot handed to it as it is cancelled, and goes on to
send. Each is made deterministic: the awaited event is set, its waiter task completes in the next loop iteration,
and the cancellation comes before that completion has woken the wait (tests/unit/test_aio.py has the bare race).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from agent.discovery import swim as sw
from agent.discovery.swim_io import SwimDriver
from agent.identity import Identity
from agent.node import NodeAgent
from agent.peer_client import PeerClient
from agent.peer_http import PeerConnections
from agent.settings import load_settings
from tests.unit.swim_sim import state_of, url_of

TOKEN = "unit-cluster-token-0123456789"


async def _waiting_on(event: asyncio.Event) -> None:
    """Until a task waits on ``event`` (bounded: 2 s of loop iterations)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 2.0
    while not event._waiters:  # type: ignore[attr-defined]  # asyncio.Event's own list, 3.10 to 3.13
        assert loop.time() < end, "nothing waits on the event"
        await asyncio.sleep(0.001)


async def _cancel_as_it_wakes(task: asyncio.Task[Any], event: asyncio.Event) -> bool:
    """Set ``event`` and cancel ``task`` once the wait on it has completed but before that wakes ``task``; whether
    ``task`` then ended within 2 s (it is ended regardless before returning)."""
    await _waiting_on(event)
    event.set()
    await asyncio.sleep(0)  # Event.wait()'s task completes: its done callbacks are scheduled, not yet run
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    while not task.done():  # the old code: stop it for good (it takes a cancellation while it sleeps)
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    return bool(done)


def test_the_membership_loop_ends_on_a_cancellation_that_comes_as_it_is_woken() -> None:
    async def main() -> bool:
        ident = Identity("b", TOKEN, None)
        own = sw.Swim("b", url_of(1), sw.SwimConfig(), random.Random(0))
        driver = SwimDriver("b", url_of(1), PeerClient(ident, lambda url: None), sw.SwimConfig(),
                            lambda: state_of(own), lambda s, u: s, lambda t: None)  # fmt: skip
        task = asyncio.ensure_future(driver.run())
        while driver._wake is None:
            await asyncio.sleep(0)
        assert driver._wake is not None
        return await _cancel_as_it_wakes(task, driver._wake)

    assert asyncio.run(main()), "the membership loop went on after its cancellation: the agent's stop would hang"


def test_the_reconcile_loop_ends_on_a_cancellation_that_comes_as_it_is_woken(tmp_path: Path) -> None:
    overrides = {"node_id": "n", "data_dir": str(tmp_path / "n"), "discovery": False, "reconcile_interval_s": 30.0}
    agent = NodeAgent(load_settings(env={}, overrides=overrides))

    async def main() -> bool:
        agent._wake = asyncio.Event()  # on this loop (3.10's Event binds the loop it was made in)
        task = asyncio.ensure_future(agent._reconcile_loop())
        return await _cancel_as_it_wakes(task, agent._wake)

    try:
        assert asyncio.run(main()), "the reconcile loop went on after its cancellation: the agent's stop would hang"
    finally:
        asyncio.run(agent.stop())


def test_a_slot_handed_to_an_exchange_as_it_is_cancelled_is_passed_on_not_taken() -> None:
    async def main() -> None:
        conns = PeerConnections(None, 1 << 16, max_busy=1)
        key = "https://127.0.0.1:7001"
        await conns._acquire(key, 1.0)  # the one slot, in use
        waiting = asyncio.ensure_future(conns._acquire(key, 10.0))
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while not conns._waiting.get(key):
            assert loop.time() < end
            await asyncio.sleep(0)
        conns._release(key)  # handed over to the waiting exchange ...
        waiting.cancel()  # ... as it is cancelled, before its wait has woken
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert conns.busy_count == 0 and not conns._waiting  # passed on: nobody holds it

    asyncio.run(main())
