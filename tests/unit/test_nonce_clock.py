"""The nonce cache across steps of the wall clock (agent/identity.py NonceCache): expiry goes on after a step back,
and no nonce is forgotten while its message could still pass the freshness check."""

from __future__ import annotations

import pytest

from agent.identity import WINDOW_S, AuthError, Identity, NonceCache, Pins

T = 1_800_000_000.0
TTL = 2 * WINDOW_S
GAP = 0.3  # one signed message every 0.3 s from one sender (an election heartbeat)


def _traffic(cache: NonceCache, start: float, seconds: float, tag: str) -> float:
    """One message every GAP s from "leader" for ``seconds`` of wall time from ``start``; the last time used."""
    n = int(seconds / GAP)
    for i in range(n):
        cache.use(f"{tag}-{i:06d}", start + i * GAP, "leader")
    return start + (n - 1) * GAP


@pytest.mark.parametrize("step", [1.0, 29.0, 30.0, 59.0, 60.0, 61.0, 90.0, 119.0, 120.0, 121.0, 180.0, 3600.0, 86400.0])
def test_after_a_step_back_the_cache_keeps_expiring(step: float) -> None:
    """review12b: after the clock stepped back 1 h the oldest nonce stood "in the future", nothing expired, and the
    sender was refused (429) after its 4,096 messages, ~20 min in. Now a step back of s seconds holds nonces at
    most min(s, 2 x TTL) longer than TTL (their messages stay fresh that long), then the cache is as before."""
    cache = NonceCache(per_sender=4096)
    last = _traffic(cache, T, 100.0, "before")
    peak = 0
    now = last - step
    for i in range(int(2 * 3600 / GAP)):  # two hours after the step
        cache.use(f"after-{i:06d}", now + i * GAP, "leader")
        peak = max(peak, cache.held("leader"))
    assert peak <= (TTL + min(step, 2 * TTL)) / GAP + 2
    assert cache.held("leader") <= TTL / GAP + 2  # and back to the steady state: TTL of messages


def test_steady_traffic_holds_one_window_of_nonces() -> None:
    cache = NonceCache()
    _traffic(cache, T, 600.0, "steady")
    assert cache.held("leader") == int(TTL / GAP) + 1


def test_a_nonce_is_not_forgotten_while_a_step_back_keeps_its_message_fresh() -> None:
    """The clock steps back 40 s, 40 s after a message: 61 s later (real time) its timestamp is 21 s old by the
    clock, fresh, so its replay must still be refused. Ageing the cache by a monotonic clock forgot the nonce at
    60 s and accepted the replay."""
    a, b = Identity("a", "nonce-clock-token-0123456789", None), Identity("b", "nonce-clock-token-0123456789", None)
    b.nonces, b.pins = NonceCache(), Pins(None)
    body = b'{"x":1}'
    message = dict(a.sign_request("b", "PUT", "/control/desired", body, T).headers)
    assert b.verify_request(message, "PUT", "/control/desired", body, T) == "a"
    for i in range(1, 41):  # 40 s of other messages, then the step back
        other = dict(a.sign_request("b", "PUT", "/control/desired", body, T + i).headers)
        b.verify_request(other, "PUT", "/control/desired", body, T + i)
    stepped = T + 40 - 40
    for i in range(1, 22):  # 21 s more: 61 s since the message, its time 21 s before the clock
        other = dict(a.sign_request("b", "PUT", "/control/desired", body, stepped + i).headers)
        b.verify_request(other, "PUT", "/control/desired", body, stepped + i)
    with pytest.raises(AuthError, match="replayed"):
        b.verify_request(message, "PUT", "/control/desired", body, stepped + 21)


def test_a_nonce_is_kept_for_the_whole_window_including_its_last_instant() -> None:
    """A message stamped 30 s ahead of the clock is fresh until 60 s after its use, that instant included."""
    cache = NonceCache()
    cache.use("n", T, "a")
    with pytest.raises(AuthError, match="replayed"):
        cache.use("n", T + TTL, "a")
    cache.use("n", T + TTL + 0.001, "a")  # no longer fresh by its time (at most T + 30): forgotten
    cache.use("m", T, "b")
    with pytest.raises(AuthError, match="replayed"):
        cache.use("m", T - TTL, "b")  # the clock stepped back a whole window: still fresh, still refused
