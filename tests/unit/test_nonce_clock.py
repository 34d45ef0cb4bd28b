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
    sender was refused (429) after its 4,096 messages, ~20 min in. Now a step back of s seconds holds at most one
    more window of nonces (those used in the TTL before it) until the clock climbs back past them + TTL, and the
    messages after the step expire as usual meanwhile: the sender is never refused."""
    cache = NonceCache(per_sender=4096)
    last = _traffic(cache, T, 100.0, "before")
    peak = 0
    now = last - step
    for i in range(int(2 * 3600 / GAP)):  # two hours after the step
        cache.use(f"after-{i:06d}", now + i * GAP, "leader")
        peak = max(peak, cache.held("leader"))
    assert peak <= (TTL + min(step, TTL)) / GAP + 2
    if step + TTL < 2 * 3600 - GAP:  # the clock has climbed back past the last nonce before the step + TTL
        assert cache.held("leader") <= TTL / GAP + 2  # back to the steady state: TTL of messages
    else:
        assert cache.held("leader") <= 2 * TTL / GAP + 2  # the window before the step, and the current one
        cache.use("climbed-back", last + TTL + GAP, "leader")  # the clock has climbed back past the old window
        assert cache.held("leader") == 1


def _replay_is_refused_whenever_fresh(step: float, captured_before_step: float) -> None:
    """A message used at T, the receiver's clock stepped back ``step`` s ``captured_before_step`` s later, its
    sender's messages going on each second; then the captured message is replayed at every second its stamp is
    fresh by the receiver's clock again: it must be refused each time."""
    a, b = Identity("a", "nonce-clock-token-0123456789", None), Identity("b", "nonce-clock-token-0123456789", None)
    b.nonces, b.pins = NonceCache(), Pins(None)
    body = b'{"desired":"captured"}'
    message = dict(a.sign_request("b", "PUT", "/control/desired", body, T).headers)  # the attacker records this
    assert b.verify_request(message, "PUT", "/control/desired", body, T) == "a"
    clock = T
    for _ in range(int(captured_before_step)):
        clock += 1.0
        other = dict(a.sign_request("b", "PUT", "/control/desired", b"{}", clock).headers)
        b.verify_request(other, "PUT", "/control/desired", b"{}", clock)
    clock -= step
    fresh_seconds = int(T + WINDOW_S - max(clock, T - WINDOW_S)) + 1
    tried = 0
    while clock <= T + WINDOW_S:
        other = dict(a.sign_request("b", "PUT", "/control/desired", b"{}", clock).headers)
        b.verify_request(other, "PUT", "/control/desired", b"{}", clock)  # never refused (no 429 after the step)
        if clock >= T - WINDOW_S:  # the captured message's stamp is fresh by this clock
            with pytest.raises(AuthError, match="replayed"):
                b.verify_request(message, "PUT", "/control/desired", body, clock)
            tried += 1
        clock += 1.0
    assert tried == fresh_seconds > 0
    assert len(b.nonces) <= 2 * (TTL + 1) + 2  # the window before the step and the current one


@pytest.mark.parametrize("step", [61.0, 100.0, 121.0, 300.0, 3600.0])
def test_a_nonce_is_not_forgotten_when_the_clock_steps_back_past_its_window(step: float) -> None:
    """review12c: with nonces forgotten at |now - at| > TTL, a step back of 100 s 2 s after a message made its nonce
    100 s "in the future", forgotten at the next message, and 98 s later the clock reached the message's stamp
    again: its replay was accepted. A nonce ahead of the clock is now kept until the clock passes it + TTL."""
    _replay_is_refused_whenever_fresh(step, 2.0)


@pytest.mark.parametrize("step", [30.0, 59.0, 88.0])
def test_a_nonce_captured_well_before_a_step_back_stays_refused(step: float) -> None:
    """Captured 58 s before a step back (its nonce not yet expired then): still held when the clock returns to it."""
    _replay_is_refused_whenever_fresh(step, 58.0)


def test_nonces_ahead_of_the_clock_count_in_the_bounds_and_expire_once_it_climbs_back() -> None:
    """What a step back leaves ahead of the clock is live: a full cache refuses (429) rather than forget it, each
    sender's share counts it, and it is forgotten once the clock reads past its use + TTL (not before)."""
    cache = NonceCache(limit=10, per_sender=6)
    for i in range(6):
        cache.use(f"a{i}", T, "a")
    for i in range(4):
        cache.use(f"b{i}", T, "b")
    back = T - 1000.0
    with pytest.raises(AuthError) as full:
        cache.use("c0", back, "c")
    assert full.value.status == 429
    assert len(cache) == 10 and cache.held("a") == 6 and cache.held("b") == 4
    with pytest.raises(AuthError, match="replayed"):
        cache.use("a3", back + 500.0, "a")
    with pytest.raises(AuthError) as full:
        cache.use("b-late", T + TTL, "b")  # the clock at their use + TTL: still live, still full
    assert full.value.status == 429
    cache.use("b-later", T + TTL + 0.001, "b")  # past it: all ten forgotten
    assert len(cache) == 1 and cache.held("a") == 0
    cache.use("a3", T + TTL + 0.002, "a")  # no longer fresh by its time: its nonce may be used again


def test_steps_back_cost_one_more_window_each_within_the_shares() -> None:
    """Repeated steps back each leave one window ahead of the clock; a sender's share bounds them all: past it
    the sender waits (429), nothing live is forgotten."""
    cache = NonceCache(per_sender=700)
    clock, n, refused = T, 0, 0
    for _ in range(4):  # 60 s of messages, then a step back of 100 s; four times
        for _ in range(int(TTL / GAP)):
            try:
                cache.use(f"m{n}", clock, "leader")
            except AuthError as exc:
                assert exc.status == 429
                refused += 1
            n += 1
            clock += GAP
            assert cache.held("leader") <= 700
        clock -= 100.0
    assert refused > 0 and cache.held("leader") == 700 == len(cache)


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
