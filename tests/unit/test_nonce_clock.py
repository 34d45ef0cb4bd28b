"""The nonce cache across steps of the wall clock (agent/identity.py NonceCache): expiry goes on after a step back,
no nonce is forgotten while its message could still pass the freshness check, and a forward jump of the wall clock
forgets nothing the monotonic clock has not aged (a forward-then-back excursion revives no message)."""

from __future__ import annotations

import random
import re

import pytest

from agent.identity import EXPIRE_PER_CALL, WINDOW_S, AuthError, Identity, NonceCache, Pins

T = 1_800_000_000.0
TTL = 2 * WINDOW_S
GAP = 0.3  # one signed message every 0.3 s from one sender (an election heartbeat)
WINDOW = int(TTL / GAP)  # one window of that sender's messages: 200
TOKEN = "nonce-clock-token-0123456789"


class Clocks:
    """A receiver's two clocks: ``tick`` is real time passing (both move), ``step`` moves the wall clock alone."""

    def __init__(self, wall: float = T) -> None:
        self.wall, self.mono = wall, 0.0

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds


class _Replayed:
    """``pytest.raises(AuthError, match="replayed")`` for the hot replay loops below, which enter it up to ~75,000
    times a test: the same check (an AuthError or subclass was raised, its text matches "replayed"; none raised
    fails, another exception passes through) without pytest.raises' per-entry cost (seed 2 of the random-excursion
    test: 2.2 s -> 0.95 s CPU)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        assert kind is not None, f"DID NOT RAISE {AuthError}"
        if not issubclass(kind, AuthError):
            return False
        assert re.search("replayed", str(exc)), f"Regex pattern did not match: {exc}"
        return True


def _traffic(cache: NonceCache, clocks: Clocks, seconds: float, tag: str) -> float:
    """One message every GAP s from "leader" for ``seconds`` of real time, the first now; the wall time of the last
    (the clocks are left one GAP after it)."""
    last = clocks.wall
    for i in range(int(seconds / GAP)):
        last = clocks.wall
        cache.use(f"{tag}-{i:06d}", clocks.wall, "leader", mono=clocks.mono)
        clocks.tick(GAP)
    return last


@pytest.mark.parametrize("step", [1.0, 29.0, 30.0, 59.0, 60.0, 61.0, 90.0, 119.0, 120.0, 121.0, 180.0, 3600.0, 86400.0])
def test_after_a_step_back_the_cache_keeps_expiring(step: float) -> None:
    """review12b: after the clock stepped back 1 h the oldest nonce stood "in the future", nothing expired, and the
    sender was refused (429) after its 4,096 messages, ~20 min in. Now a step back of s seconds holds at most one
    more window of nonces (those used in the TTL before it) until the clock climbs back past them + TTL, and the
    messages after the step expire as usual meanwhile: the sender is never refused."""
    cache = NonceCache(per_sender=4096)
    clocks = Clocks()
    last = _traffic(cache, clocks, 100.0, "before")
    peak = 0
    clocks.step(-step - GAP)  # the next message at the wall time of the last one, less the step
    for i in range(int(2 * 3600 / GAP)):  # two hours after the step
        cache.use(f"after-{i:06d}", clocks.wall, "leader", mono=clocks.mono)
        peak = max(peak, cache.held("leader"))
        clocks.tick(GAP)
    assert peak <= (TTL + min(step, TTL)) / GAP + 2
    if step + TTL < 2 * 3600 - GAP:  # the clock has climbed back past the last nonce before the step + TTL
        assert cache.held("leader") <= WINDOW + 2  # back to the steady state: TTL of messages
    else:
        assert cache.held("leader") <= 2 * WINDOW + 2  # the window before the step, and the current one
        clocks.step(last + TTL + GAP - clocks.wall)  # the clock has climbed back past the old window
        cache.use("climbed-back", clocks.wall, "leader", mono=clocks.mono + TTL + GAP)
        assert cache.held("leader") == 1


def _replay_is_refused_whenever_fresh(step: float, captured_before_step: float) -> None:
    """A message used at T, the receiver's clock stepped back ``step`` s ``captured_before_step`` s later, its
    sender's messages going on each second; then the captured message is replayed at every second its stamp is
    fresh by the receiver's clock again: it must be refused each time."""
    a, b = Identity("a", TOKEN, None), Identity("b", TOKEN, None)
    b.nonces, b.pins = NonceCache(), Pins(None)
    body = b'{"desired":"captured"}'
    message = dict(a.sign_request("b", "PUT", "/control/desired", body, T).headers)  # the attacker records this
    clocks = Clocks()
    assert b.verify_request(message, "PUT", "/control/desired", body, T, mono=clocks.mono) == "a"
    for _ in range(int(captured_before_step)):
        clocks.tick(1.0)
        other = dict(a.sign_request("b", "PUT", "/control/desired", b"{}", clocks.wall).headers)
        b.verify_request(other, "PUT", "/control/desired", b"{}", clocks.wall, mono=clocks.mono)
    clocks.step(-step)
    fresh_seconds = int(T + WINDOW_S - max(clocks.wall, T - WINDOW_S)) + 1
    tried = 0
    while clocks.wall <= T + WINDOW_S:
        other = dict(a.sign_request("b", "PUT", "/control/desired", b"{}", clocks.wall).headers)
        b.verify_request(other, "PUT", "/control/desired", b"{}", clocks.wall, mono=clocks.mono)  # never refused
        if clocks.wall >= T - WINDOW_S:  # the captured message's stamp is fresh by this clock
            with _Replayed():
                b.verify_request(message, "PUT", "/control/desired", body, clocks.wall, mono=clocks.mono)
            tried += 1
        clocks.tick(1.0)
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
        cache.use(f"a{i}", T, "a", mono=0.0)
    for i in range(4):
        cache.use(f"b{i}", T, "b", mono=0.0)
    back = T - 1000.0  # the clock stepped back 1000 s, 1 s later
    with pytest.raises(AuthError) as full:
        cache.use("c0", back, "c", mono=1.0)
    assert full.value.status == 429
    assert len(cache) == 10 and cache.held("a") == 6 and cache.held("b") == 4
    with pytest.raises(AuthError, match="replayed"):
        cache.use("a3", back + 500.0, "a", mono=501.0)  # aged by the monotonic clock, not by the wall clock
    assert len(cache._ahead) == 10
    with pytest.raises(AuthError) as full:
        cache.use("b-late", T + TTL, "b", mono=1001.0 + TTL)  # the clock at their use + TTL: still live, still full
    assert full.value.status == 429
    cache.use("b-later", T + TTL + 0.001, "b", mono=1001.001 + TTL)  # past it: all ten forgotten
    assert len(cache) == 1 and cache.held("a") == 0
    cache.use("a3", T + TTL + 0.002, "a", mono=1001.002 + TTL)  # no longer fresh by its time: may be used again


def test_steps_back_cost_one_more_window_each_within_the_shares() -> None:
    """Repeated steps back each leave one window ahead of the clock; a sender's share bounds them all: past it
    the sender waits (429), nothing live is forgotten."""
    cache = NonceCache(per_sender=700)
    clocks, n, refused = Clocks(), 0, 0
    for _ in range(4):  # 60 s of messages, then a step back of 100 s; four times
        for _ in range(WINDOW):
            try:
                cache.use(f"m{n}", clocks.wall, "leader", mono=clocks.mono)
            except AuthError as exc:
                assert exc.status == 429
                refused += 1
            n += 1
            clocks.tick(GAP)
            assert cache.held("leader") <= 700
        clocks.step(-100.0)
    assert refused > 0 and cache.held("leader") == 700 == len(cache)


def test_steady_traffic_holds_one_window_of_nonces() -> None:
    cache = NonceCache()
    _traffic(cache, Clocks(), 600.0, "steady")
    assert cache.held("leader") == WINDOW + 1


def test_a_nonce_is_not_forgotten_while_a_step_back_keeps_its_message_fresh() -> None:
    """The clock steps back 40 s, 40 s after a message: 61 s later (real time) its timestamp is 21 s old by the
    clock, fresh, so its replay must still be refused. Ageing the cache by a monotonic clock alone forgot the nonce
    at 60 s and accepted the replay."""
    a, b = Identity("a", TOKEN, None), Identity("b", TOKEN, None)
    b.nonces, b.pins = NonceCache(), Pins(None)
    body = b'{"x":1}'
    clocks = Clocks()
    message = dict(a.sign_request("b", "PUT", "/control/desired", body, T).headers)
    assert b.verify_request(message, "PUT", "/control/desired", body, T, mono=clocks.mono) == "a"
    for _ in range(40):  # 40 s of other messages, then the step back
        clocks.tick(1.0)
        other = dict(a.sign_request("b", "PUT", "/control/desired", body, clocks.wall).headers)
        b.verify_request(other, "PUT", "/control/desired", body, clocks.wall, mono=clocks.mono)
    clocks.step(-40.0)
    for _ in range(21):  # 21 s more: 61 s since the message, its time 21 s before the clock
        clocks.tick(1.0)
        other = dict(a.sign_request("b", "PUT", "/control/desired", body, clocks.wall).headers)
        b.verify_request(other, "PUT", "/control/desired", body, clocks.wall, mono=clocks.mono)
    with pytest.raises(AuthError, match="replayed"):
        b.verify_request(message, "PUT", "/control/desired", body, clocks.wall, mono=clocks.mono)


def test_a_nonce_is_kept_for_the_whole_window_including_its_last_instant() -> None:
    """A message stamped 30 s ahead of the clock is fresh until 60 s after its use, that instant included."""
    cache = NonceCache()
    cache.use("n", T, "a", mono=0.0)
    with pytest.raises(AuthError, match="replayed"):
        cache.use("n", T + TTL, "a", mono=TTL)
    cache.use("n", T + TTL + 0.001, "a", mono=TTL + 0.001)  # no longer fresh by its time (at most T + 30): forgotten
    cache.use("m", T, "b", mono=TTL + 0.002)
    with pytest.raises(AuthError, match="replayed"):
        cache.use("m", T - TTL, "b", mono=TTL + 0.003)  # the clock stepped back a whole window: still refused


# -- a forward jump of the wall clock, then its correction ---------------------------------------------------------
def test_a_nonce_is_forgotten_only_once_both_clocks_have_aged_it() -> None:
    """The wall clock past use + TTL is not enough (it may have jumped ahead and come back), nor is the monotonic
    clock (the wall clock may have stepped back, keeping the message fresh): both are needed, each to the instant."""
    jumped = NonceCache()
    jumped.use("n", T, "a", mono=0.0)
    with pytest.raises(AuthError, match="replayed"):
        jumped.use("n", T + 3600.0, "a", mono=1.0)  # the wall clock alone: +1 h, one second later
    with pytest.raises(AuthError, match="replayed"):
        jumped.use("n", T + 3600.0, "a", mono=TTL)  # and the monotonic clock to the instant
    jumped.use("n", T + 3600.0, "a", mono=TTL + 0.001)  # both past: forgotten
    stepped = NonceCache()
    stepped.use("n", T, "a", mono=0.0)
    with pytest.raises(AuthError, match="replayed"):
        stepped.use("n", T + TTL, "a", mono=3600.0)  # the monotonic clock alone: an hour on, the wall clock 60 s
    stepped.use("n", T + TTL + 0.001, "a", mono=3600.001)  # both past: forgotten
    assert jumped.held("a") == stepped.held("a") == 1


def test_review12f_a_message_captured_before_a_forward_excursion_stays_refused_after_it() -> None:
    """review12f (nonce_forward_then_back.py): a nonce used at T, any message while the clock reads +1 h, then the
    clock corrected to T + 5 s: the message stamped T was fresh again and its nonce forgotten (replay accepted)."""
    cache = NonceCache()
    cache.use("nonce-AAAA", T, "m1", "10.0.0.2", mono=0.0)  # the original message, used at T
    cache.use("nonce-BBBB", T + 3600.0, "m2", "10.0.0.3", mono=1.0)  # any message while the clock reads +1 h
    with pytest.raises(AuthError, match="replayed"):
        cache.use("nonce-AAAA", T + 5.0, "m1", "10.0.0.2", mono=5.0)  # the jump corrected
    assert len(cache) == 2


def _excursion(jump: float, lasting: float) -> None:
    """The whole cluster's clocks read ``jump`` s ahead for ``lasting`` s of real time (one bad time source), then
    are corrected; a's messages every second to b throughout, two of them captured: one 2 s before the jump and the
    last one before the correction. After the correction, every second until b's clock has climbed back past the
    second one's window: a's genuine message passes (no outage from the fix), and each captured message, replayed
    whenever b's clock reads its stamp as fresh, is refused."""
    a, b = Identity("a", TOKEN, None), Identity("b", TOKEN, None)
    b.nonces, b.pins = NonceCache(), Pins(None)
    clocks, n = Clocks(), 0

    def send(body: bytes) -> tuple[dict[str, str], bytes, float]:
        nonlocal n
        n += 1
        headers = dict(a.sign_request("b", "PUT", "/control/desired", body + str(n).encode(), clocks.wall).headers)
        signed = body + str(n).encode()
        assert b.verify_request(headers, "PUT", "/control/desired", signed, clocks.wall, mono=clocks.mono) == "a"
        return headers, signed, clocks.wall

    before = send(b"before")
    for _ in range(2):
        clocks.tick(1.0)
        send(b"genuine")
    clocks.step(jump)
    during = send(b"during")
    while clocks.mono < 2.0 + lasting:
        clocks.tick(1.0)
        during = send(b"during")
    clocks.step(-jump)  # corrected
    tried = {"before": 0, "during": 0}
    while clocks.wall <= during[2] + WINDOW_S:
        clocks.tick(1.0)
        send(b"genuine")  # never refused
        for name, (headers, body, stamp) in (("before", before), ("during", during)):
            if abs(clocks.wall - stamp) <= WINDOW_S:
                with _Replayed():
                    b.verify_request(headers, "PUT", "/control/desired", body, clocks.wall, mono=clocks.mono)
                tried[name] += 1
    assert tried["during"] == 2 * WINDOW_S + 1  # from 30 s before its stamp to 30 s after
    assert tried["before"] == max(0, int(WINDOW_S - 2 - lasting))  # until the corrected clock reads T + 30 s
    assert len(b.nonces) <= 2 * (TTL + 1) + 2  # the window before the correction and the current one


@pytest.mark.parametrize("jump", [61.0, 600.0, 3600.0])
@pytest.mark.parametrize("lasting", [1.0, 20.0, 50.0])
def test_a_forward_excursion_then_its_correction_revives_no_captured_message(jump: float, lasting: float) -> None:
    _excursion(jump, lasting)


@pytest.mark.parametrize("jump", [61.0, 3600.0, 86400.0])
@pytest.mark.parametrize("lasting", [10.0, 120.0, 600.0])
def test_a_forward_excursion_holds_at_most_one_more_window(jump: float, lasting: float) -> None:
    """Through a forward jump the cache holds what the monotonic clock has not aged, one window of the sender's
    messages, as without the jump (the wall clock alone had dropped them at once); the correction is a step back
    and costs one more window (the TTL before it), held until the wall clock climbs back past it: the peak is two
    windows (400 heartbeats), the sender is never refused, and the steady window comes back."""
    cache = NonceCache()
    clocks = Clocks()
    _traffic(cache, clocks, 100.0, "before")
    assert cache.held("leader") <= WINDOW + 1
    clocks.step(jump)
    ahead_peak = 0
    for i in range(int(lasting / GAP)):
        cache.use(f"during-{i:06d}", clocks.wall, "leader", mono=clocks.mono)
        ahead_peak = max(ahead_peak, cache.held("leader"))
        clocks.tick(GAP)
    assert ahead_peak <= WINDOW + 2  # one window: the jump costs nothing over the steady state
    last_during = clocks.wall - GAP
    clocks.step(-jump)
    peak = 0
    for i in range(int((jump + TTL + 10.0) / GAP)):
        cache.use(f"after-{i:06d}", clocks.wall, "leader", mono=clocks.mono)
        peak = max(peak, cache.held("leader"))
        clocks.tick(GAP)
    assert clocks.wall - GAP > last_during + TTL
    assert peak <= (TTL + min(lasting, TTL)) / GAP + 2 <= 2 * WINDOW + 2
    assert cache.held("leader") <= WINDOW + 2
    held = [nonce for _, nonce in [*cache._seen, *cache._ahead]]
    assert not [nonce for nonce in held if not nonce.startswith("after-")]  # nothing from before the correction


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_excursion_of_the_clock_revives_a_message_stamped_at_the_true_time(seed: int) -> None:
    """Random excursions of the receiver's wall clock ahead of the true time (1 s to 2 h, lasting ~50 s on average) and
    corrections back to it, two senders (one on the true time, one following the receiver's clock) and small shares:
    every message stamped at the true time, replayed whenever the receiver's clock reads it as fresh, is refused;
    the shares' counts stay consistent and within their bounds."""
    rng = random.Random(seed)
    cache = NonceCache(limit=600, per_sender=300, per_source=400)
    true, ahead, n = T, 0.0, 0
    captured: list[tuple[str, str, float]] = []  # (sender, nonce, stamp) of messages stamped at the true time
    refused_replays = 0
    for _ in range(30_000):
        dt = rng.uniform(0.0, 0.2)
        true += dt
        if rng.random() < 0.002:
            ahead = 0.0 if ahead else rng.uniform(1.0, 7200.0)  # a jump ahead, or its correction
        wall, mono = true + ahead, true - T
        for sender, stamp in (("true", true), ("follower", wall)):
            if abs(wall - stamp) > WINDOW_S:
                continue  # refused by the freshness check before the cache
            n += 1
            try:
                cache.use(f"n{n}", wall, sender, "10.0.0.1" if sender == "true" else "10.0.0.2", mono=mono)
            except AuthError as exc:
                assert exc.status == 429
                continue
            if stamp == true:
                captured.append((sender, f"n{n}", stamp))
        for sender, nonce, stamp in captured[-5:] + rng.sample(captured, min(5, len(captured))):
            if abs(wall - stamp) <= WINDOW_S:
                with _Replayed():
                    cache.use(nonce, wall, sender, mono=mono)
                refused_replays += 1
        assert sum(cache._held.values()) == len(cache) == sum(cache._from.values()) <= cache.limit
        assert all(v <= cache.per_sender for v in cache._held.values())
    assert refused_replays > 10_000


def test_entries_are_queued_in_monotonic_order_when_one_was_read_before_a_wait() -> None:
    """review16a F6: verify_request_async reads ``mono`` before awaiting a first contact's pin write, so a nonce
    can be used after a later-read one. It is stored at the later stamp: the queue stays in order, and the one
    behind it is released in its turn, not held up (nor released before its own ttl)."""
    cache = NonceCache()
    cache.use("after", T + 5.0, "b", mono=5.0)  # read at 5.0, used at once
    cache.use("before", T + 1.0, "a", mono=1.0)  # read at 1.0, used after a 4 s pin write
    stamps = [since for _, since, _ in cache._seen.values()]
    assert stamps == sorted(stamps) == [5.0, 5.0]
    cache.use("late", T + TTL + 4.0, "c", mono=TTL + 4.0)
    assert cache.held("a") == 1  # its use is at most the wait later than read: held, never released early
    cache.use("later", T + TTL + 5.5, "c", mono=TTL + 5.5)
    assert cache.held("a") == cache.held("b") == 0  # both released in order


def test_one_call_moves_or_forgets_at_most_a_capped_number_and_the_rest_later() -> None:
    """review16a F5: after idle (or a long climb back) one message paid for a whole window. Capped per call; what
    the cap leaves stays refused as a replay and counted until a later call forgets it."""
    cache = NonceCache(per_sender=10**6, per_source=10**6)
    n = 3 * EXPIRE_PER_CALL + 10
    for i in range(n):
        cache.use(f"n{i:06d}", T + i * 0.001, "s", mono=i * 0.001)
    clocks = Clocks(T + 200.0)
    clocks.mono = 200.0
    clocks.step(-3600.0)  # a step back after idle: everything moves to _ahead, EXPIRE_PER_CALL at a time
    cache.use("x0", clocks.wall, "x", mono=clocks.mono)
    assert len(cache._ahead) == EXPIRE_PER_CALL and len(cache) == n + 1
    with pytest.raises(AuthError, match="replayed"):
        cache.use(f"n{n - 1:06d}", clocks.wall, "s", mono=clocks.mono)  # not moved yet: still refused
    for i in range(1, 4):
        cache.use(f"x{i}", clocks.wall, "x", mono=clocks.mono)
    assert len(cache._ahead) == n and len(cache._seen) == 4
    clocks.tick(3600.0 + TTL)  # climbed back: they go, EXPIRE_PER_CALL at a time
    cache.use("y0", clocks.wall, "x", mono=clocks.mono)
    assert cache.held("x") == 1 and cache.held("s") == n - (EXPIRE_PER_CALL - 4)  # x0-x3 went first, in the cap
    for i in range(1, 4):
        cache.use(f"y{i}", clocks.wall, "x", mono=clocks.mono)
    assert cache.held("s") == 0 and len(cache._ahead) == 0


def test_the_cap_never_causes_a_refusal() -> None:
    """A share or the cache full of entries that are due: everything due is forgotten before a 429."""
    cache = NonceCache(limit=3 * EXPIRE_PER_CALL, per_sender=10**6, per_source=10**6)
    for i in range(3 * EXPIRE_PER_CALL):
        cache.use(f"n{i:06d}", T, "s", mono=0.0)
    cache.use("new", T + TTL + 1.0, "s", mono=TTL + 1.0)  # the cache was full of due entries: accepted
    assert len(cache) == 2 * EXPIRE_PER_CALL + 1
    share = NonceCache(per_sender=EXPIRE_PER_CALL, per_source=10**6)
    for i in range(2 * EXPIRE_PER_CALL):
        share.use(f"o{i:06d}", T, f"other{i}", mono=0.0)  # queued ahead of the sender's own
    for i in range(EXPIRE_PER_CALL):
        share.use(f"s{i:06d}", T + 1.0, "s", mono=1.0)
    share.use("again", T + TTL + 2.0, "s", mono=TTL + 2.0)  # its share was full of due entries behind the cap
    assert share.held("s") == 1
