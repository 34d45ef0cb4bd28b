"""``agent.aio.wait_for``: a timeout that never loses a cancellation, on Python 3.10 to 3.13.

Python 3.10 and 3.11's ``asyncio.wait_for`` returns the inner result when the waiting task is cancelled as the
inner await completes (the cancellation is lost). Each race below is made deterministic: the inner future is
completed in the same loop iteration as the cancellation (or as the outer deadline fires). With
``asyncio.wait_for`` in place of ``aio.wait_for`` the first test's task returns ``"data"`` and the second's
deadline runs on to the next read's own 2 s timeout (checked on 3.10.13 and 3.11.7). Only the standard library
and pytest are imported here, so this file also runs under interpreters without the project's dependencies.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from agent import aio

T = TypeVar("T")


def _run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


def test_a_cancellation_that_arrives_as_the_inner_await_completes_is_raised() -> None:
    async def main() -> None:
        inner: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        outer = asyncio.ensure_future(aio.wait_for(inner, 10.0))
        await asyncio.sleep(0)  # outer is waiting
        inner.set_result("data")  # its wake-up is scheduled ...
        outer.cancel()  # ... and the cancellation arrives before it runs
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert outer.cancelled()

    _run(main)


def test_a_cancelled_inner_coroutine_is_ended_before_the_cancellation_is_raised() -> None:
    ended: list[str] = []

    async def inner() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0)  # a clean-up that itself awaits
            ended.append("inner")

    async def main() -> None:
        outer = asyncio.ensure_future(aio.wait_for(inner(), 10.0))
        await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert ended == ["inner"]  # nothing of the inner await runs after the wait has returned

    _run(main)


async def _loop_of_reads(wait: Callable[[Awaitable[Any], float], Awaitable[Any]]) -> float:
    """Seconds a 50 ms deadline over three reads took to raise, the first read completing as the deadline fires."""
    loop = asyncio.get_running_loop()
    reads: list[asyncio.Future[bytes]] = [loop.create_future() for _ in range(3)]

    async def fetch() -> None:
        for read in reads:
            await wait(read, 2.0)  # each read's own timeout

    now = loop.time()
    loop.time = lambda: now  # type: ignore[method-assign]  # both timers below are due at one instant
    try:
        outer = asyncio.ensure_future(wait(fetch(), 0.05))
        for _ in range(3):
            await asyncio.sleep(0)  # the outer deadline and the first read's wait are armed
        loop.call_at(now + 0.05, lambda: reads[0].done() or reads[0].set_result(b"x"))
    finally:
        del loop.time  # type: ignore[method-assign]  # the loop's own clock again
    start = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await outer
    return time.monotonic() - start


def test_a_deadline_over_a_loop_of_waits_holds_when_a_wait_completes_as_it_fires() -> None:
    took = _run(lambda: _loop_of_reads(aio.wait_for))
    assert took < 1.0, f"the 50 ms deadline took {took:.2f} s: its cancellation was lost in the first read"


def test_a_result_in_time_an_exception_and_a_timeout() -> None:
    async def later(value: str, delay: float) -> str:
        await asyncio.sleep(delay)
        return value

    async def fails() -> None:
        raise ValueError("inner")

    async def main() -> None:
        assert await aio.wait_for(later("ok", 0.0), 1.0) == "ok"
        assert await aio.wait_for(later("ok", 0.0), None) == "ok"
        with pytest.raises(ValueError, match="inner"):
            await aio.wait_for(fails(), 1.0)
        slow = asyncio.ensure_future(later("late", 10.0))
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await aio.wait_for(slow, 0.02)
        assert time.monotonic() - start < 1.0 and slow.cancelled()
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done.set_result("ready")
        assert await aio.wait_for(done, 0) == "ready"  # a zero timeout still takes what is ready
        pending = asyncio.ensure_future(later("never", 10.0))
        with pytest.raises(asyncio.TimeoutError):
            await aio.wait_for(pending, 0)
        assert pending.cancelled()

    _run(main)


def test_an_inner_await_that_refuses_the_cancellation_is_waited_for_and_its_result_returned() -> None:
    """As asyncio.wait_for does on every version: the timeout cancels, and the inner await decides."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
            return "kept"
        return "slept"

    assert _run(lambda: aio.wait_for(stubborn(), 0.01)) == "kept"


def test_an_exception_dropped_for_a_cancellation_is_not_reported_as_never_retrieved() -> None:
    reported: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        inner: asyncio.Future[str] = loop.create_future()
        outer = asyncio.ensure_future(aio.wait_for(inner, 10.0))
        await asyncio.sleep(0)
        inner.set_exception(OSError("reset"))
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        del inner
        gc.collect()

    _run(main)
    assert not [c for c in reported if "never retrieved" in str(c.get("message", ""))], reported
