"""``wait_for``: an await bounded by a timeout that never loses a cancellation, on Python 3.10 to 3.13.

Python 3.10 and 3.11's ``asyncio.wait_for`` hands back the inner result when the task awaiting it is cancelled
just as the inner await completes (its done callback has not yet woken the wait): the cancellation is lost.
A loop stopped by ``task.cancel()`` that waits that way (``while True: await aio.wait_for(wake.wait(), t)``)
then goes round again, and whoever awaits the stopped task waits for ever; a deadline enforced by cancelling a
coroutine that itself waits that way runs on past it. Python 3.12 rebuilt ``asyncio.wait_for`` on
``asyncio.timeout`` and lost nothing since; 3.10 (JetPack 6's Python) has no ``asyncio.timeout`` at all. So on
3.12+ this is ``asyncio.wait_for``; before, it is 3.10/3.11's ``asyncio.wait_for`` (the same futures and timer,
the same cost) except that a cancellation always propagates: the inner task is cancelled and waited for (as
``asyncio.wait_for`` does: nothing of it runs after we return), and an inner result that was ready at that moment
is dropped, as 3.12 drops it.

The agent's code calls this, never ``asyncio.wait_for`` (ruff's banned-api rule, pyproject.toml).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

NATIVE = sys.version_info >= (3, 12)  # asyncio.wait_for loses no cancellation from 3.12 on


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """``aw``'s result, or ``asyncio.TimeoutError`` once ``timeout`` seconds have passed (``aw`` is then cancelled
    and waited for); a cancellation of the caller always raises ``CancelledError``, even one that arrives as
    ``aw`` completes. ``timeout`` None waits without a bound."""
    if NATIVE:
        return await asyncio.wait_for(aw, timeout)  # noqa: TID251 (the one place it is called)
    return await _wait_for(aw, timeout)


async def _wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """3.10/3.11's ``asyncio.wait_for`` less its one flaw: a cancellation is raised even when the inner task is done.
    The waits are on futures of our own: a task cancelled while it awaits a future that is already done resumes
    with CancelledError all the same (Task._must_cancel), so no cancellation can slip past an ``await`` here."""
    task = asyncio.ensure_future(aw)
    if timeout is None:
        return await task  # a cancellation goes into the task; one arriving as it completes is raised here
    if timeout <= 0:
        if task.done():
            return task.result()
        await _cancelled(task)
        raise asyncio.TimeoutError
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    timer = loop.call_later(timeout, _release, waiter)
    done = functools.partial(_release, waiter)
    task.add_done_callback(done)
    try:
        try:
            await waiter
        except asyncio.CancelledError:  # asyncio.wait_for returned the task's result here when it was done
            task.remove_done_callback(done)
            await _cancelled(task)
            raise
        if task.done():
            return task.result()
        task.remove_done_callback(done)
        await _cancelled(task)
        if task.cancelled():
            raise asyncio.TimeoutError
        return task.result()  # it completed (or raised) rather than take the cancellation, as asyncio.wait_for
    finally:
        timer.cancel()


def _release(waiter: asyncio.Future[None], *_: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _cancelled(task: asyncio.Future[T]) -> None:
    """Cancel ``task`` and wait until it has ended (a cancellation of ours while we wait is raised)."""
    if not task.done():
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done = functools.partial(_release, waiter)
        task.add_done_callback(done)
        try:
            task.cancel()
            await waiter
        finally:
            task.remove_done_callback(done)
    if not task.cancelled():
        task.exception()  # retrieved: a result or error dropped for a cancellation is not "never retrieved"
