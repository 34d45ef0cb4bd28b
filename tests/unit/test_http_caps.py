"""The connection cap's pure rules (agent/http_caps.py): the minimum body rate and the cap's ``Retry-After``, and
the 503 head h11 writes for uvicorn's own refusal (agent/http_sliced.py ``ChunkCountingConnection.send``).

Over real sockets at a real agent's cap: tests/service/test_connection_cap.py."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import h11
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.protocols.http.flow_control import service_unavailable

from agent.http_caps import (
    BODY_MIN_RATE,
    BODY_RATE_GRACE_S,
    BODY_STALL_S,
    body_rate_left,
    retry_after_s,
    slowest_body,
    takeable_rate,
    time_to_finish,
)
from agent.http_sliced import CAP_REFUSAL, UVICORN_REFUSAL_TYPE, ChunkCountingConnection, raw_response

KBIT = 1000 / 8  # bytes a second per kbit/s


def behind_at(send_every_s: float, piece: int, horizon_s: float, step_s: float = 0.01) -> float | None:
    """When a body sending ``piece`` bytes every ``send_every_s`` (the first at 0) first counts as behind the default
    minimum rate, looked at every ``step_s`` up to ``horizon_s`` (None: never)."""
    for i in range(int(horizon_s / step_s) + 1):
        t = i * step_s
        sent = piece * (int(t / send_every_s + 1e-9) + 1)
        if body_rate_left(sent, t, BODY_MIN_RATE, BODY_RATE_GRACE_S) <= 0:
            return t
    return None


def test_an_honest_slow_upload_is_never_behind_and_a_trickle_is_behind_after_the_grace() -> None:
    # a 2 KB body over a 64 kbit/s link: 100-byte pieces every 12.5 ms (8 KB/s); and 30 s of it (240 KB)
    assert behind_at(100 / (64 * KBIT), 100, 30.0) is None
    # a 2G link (~40 kbit/s) and one at 8 kbit/s (1 KB/s, twice the minimum) are never behind either
    assert behind_at(100 / (40 * KBIT), 100, 30.0) is None
    assert behind_at(100 / (8 * KBIT), 100, 30.0) is None
    # one byte every 0.9 s never stalls (BODY_STALL_S 1 s) but falls behind just after the grace
    t = behind_at(0.9, 1, 30.0)
    assert t is not None and BODY_RATE_GRACE_S <= t < BODY_RATE_GRACE_S + 0.1, t
    # a body that sends nothing at all after its head: behind at the grace exactly
    assert body_rate_left(0, BODY_RATE_GRACE_S, BODY_MIN_RATE, BODY_RATE_GRACE_S) == 0


@given(
    st.floats(0, 3600),
    st.floats(1, 1e6),
    st.floats(0, 60),
    st.floats(1.0, 100.0),
)
def test_a_body_at_or_over_the_rate_is_never_behind(elapsed: float, rate: float, grace: float, factor: float) -> None:
    """Whatever the rate and grace, a body that has sent at least ``rate`` bytes a second of its time is not behind;
    one that sent nothing is behind from the grace on; each byte buys ``1 / rate`` s."""
    sent = math.ceil(rate * factor * elapsed)
    assert body_rate_left(sent, elapsed, rate, grace) >= grace - 1e-6
    assert (body_rate_left(0, elapsed, rate, grace) <= 0) == (elapsed >= grace)
    more = body_rate_left(sent + 1000, elapsed, rate, grace) - body_rate_left(sent, elapsed, rate, grace)
    assert math.isclose(more, 1000 / rate, rel_tol=1e-6, abs_tol=1e-6)


def test_no_minimum_rate_never_counts_a_body_behind() -> None:
    assert body_rate_left(0, 1e9, 0.0, BODY_RATE_GRACE_S) == math.inf


def test_retry_after_is_the_time_after_which_every_upload_now_coming_can_be_given_up() -> None:
    assert retry_after_s(BODY_STALL_S, BODY_RATE_GRACE_S) == 2  # the defaults: the grace is the longer
    assert retry_after_s(1.0, 0.0) == 1  # no minimum rate: the stall
    assert retry_after_s(0.4, 0.0) == 1  # at least a second (whole seconds)
    assert retry_after_s(2.5, 1.0) == 3  # rounded up: a retry sooner may find the same uploads still counted


def _head_of(retry_after_s: int | None, status: int, headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The response head a connection writes to a request, the protocol having set ``retry_after_s`` for it (as
    ``_should_upgrade`` does for uvicorn's refusal at its limit), read back by a client."""
    conn = ChunkCountingConnection(16384)
    conn.retry_after_s = 9  # a previous request's: a new request clears it
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request) and conn.retry_after_s is None
    conn.retry_after_s = retry_after_s
    wire = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    client.receive_data(wire)
    event = client.next_event()
    assert isinstance(event, h11.Response) and event.status_code == status
    assert wire.lower().count(b"retry-after") <= 1
    return dict(event.headers)


def test_a_503_head_without_retry_after_gets_the_caps_and_only_when_asked() -> None:
    plain = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"19"), (b"connection", b"close")]
    assert _head_of(2, 503, plain)[b"retry-after"] == b"2"  # uvicorn's refusal (its exact head)
    assert b"retry-after" not in _head_of(None, 503, plain)  # a request the cap let in: the app's 503 as it is
    assert _head_of(2, 503, [*plain, (b"retry-after", b"7")])[b"retry-after"] == b"7"  # one of its own is kept
    assert b"retry-after" not in _head_of(2, 200, plain[:2])  # only a 503


def test_uvicorns_text_refusal_at_its_limit_goes_out_as_the_json_error_with_retry_after() -> None:
    """review26a L3: uvicorn's own 503 at ``limit_concurrency`` (flow_control.service_unavailable: its exact head
    and body, sent as uvicorn sends them) reached clients as text/plain "Service Unavailable", the one error of the
    agent's that was not ``{"error": ...}``. An app's 503 to a request the cap let in passes as it is."""

    def answer(
        retry_after_s: int | None, headers: list[tuple[bytes, bytes]], body: bytes, method: str = "GET"
    ) -> tuple[Any, bytes]:
        conn = ChunkCountingConnection(16384)
        conn.receive_data(b"%s / HTTP/1.1\r\nHost: a\r\n\r\n" % method.encode())
        assert isinstance(conn.next_event(), h11.Request)
        conn.retry_after_s = retry_after_s
        wire = b"".join(
            conn.send(e) or b""
            for e in (h11.Response(status_code=503, headers=headers), h11.Data(data=body), h11.EndOfMessage())
        )
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        client.receive_data(wire)
        head, got = client.next_event(), b""
        while isinstance(event := client.next_event(), h11.Data):
            got += event.data
        assert isinstance(event, h11.EndOfMessage)
        return head, got

    sent: list[Any] = []

    async def keep(message: Any) -> None:
        sent.append(message)

    asyncio.run(service_unavailable({}, None, keep))  # type: ignore[arg-type]
    uvicorns, text = sent[0]["headers"], sent[1]["body"]  # the installed uvicorn's: the test breaks if it changes
    assert (b"content-type", UVICORN_REFUSAL_TYPE) in uvicorns and text == b"Service Unavailable"
    head, body = answer(2, uvicorns, text)
    headers = dict(head.headers)
    assert head.status_code == 503 and headers[b"retry-after"] == b"2" and headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json" and json.loads(body) == {"error": CAP_REFUSAL}
    head, body = answer(2, uvicorns, b"", "HEAD")  # uvicorn sends a HEAD's body empty (review26c: h11 raised)
    assert head.status_code == 503 and dict(head.headers)[b"content-type"] == b"application/json" and body == b""
    head, body = answer(None, uvicorns, text)  # the cap let it in: an app's 503 as it is
    assert body == b"Service Unavailable" and b"retry-after" not in dict(head.headers)
    own = [(b"content-type", b"application/json"), (b"content-length", b"17")]
    head, body = answer(2, own, b'{"error": "busy"}')  # a JSON 503 at the cap: kept, Retry-After added
    assert body == b'{"error": "busy"}' and dict(head.headers)[b"retry-after"] == b"2"


def test_the_raw_503_of_a_given_up_request_says_retry_after() -> None:
    wire = raw_response(503, "Service Unavailable", "given to a newcomer", 2)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert body.startswith(b'{"error"')
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nretry-after: 2" in head and b"connection: close" in head
    assert b"retry-after" not in raw_response(503, "Service Unavailable", "x")


def test_a_bodys_time_to_finish_is_what_is_left_at_its_measured_rate() -> None:
    assert time_to_finish(2000, 1000, 2.0) == 4.0  # 500 B/s, 2 KB to go
    assert time_to_finish(0, 10, 1.0) == 0.0
    assert time_to_finish(100, 0, 5.0) == math.inf  # nothing sent: no rate
    assert time_to_finish(math.inf, 5000, 1.0) == math.inf  # chunked: its length unknown


def test_only_a_body_below_four_times_the_minimum_rate_or_that_cannot_finish_in_time_may_be_taken() -> None:
    """review15d F1: a 3 MB upload (or a chunked one) at 100 KB/s was the first given up; a trickler kept its place."""
    assert takeable_rate(6000, 990_000, 10.0, 500.0, 30.0) == 600.0  # 600 B/s: below 2,000
    assert takeable_rate(6000, math.inf, 10.0, 500.0, 30.0) == 600.0  # chunked: judged by its rate
    assert takeable_rate(200_000, 2_800_000, 2.0, 500.0, 30.0) is None  # 100 KB/s, done at 30 s: kept
    assert takeable_rate(200_000, math.inf, 2.0, 500.0, 30.0) is None  # chunked at 100 KB/s: kept
    assert takeable_rate(30_000, 1_000_000, 10.0, 500.0, 30.0) == 3000.0  # 3 KB/s, 333 s more: the 408 comes anyway
    assert takeable_rate(30_000, 1_000_000, 10.0, 500.0, None) is None  # no body deadline known: its rate alone
    assert takeable_rate(0, 1000, 3.0, 500.0, 30.0) == 0.0  # nothing sent
    assert takeable_rate(30_000, 1_000_000, 10.0, 0.0, None) is None  # no minimum rate, no deadline: never


def test_the_slowest_body_of_an_address_holding_more_than_the_newcomers_is_taken() -> None:
    """review15c F5: bodies just over the minimum rate held every place at a full cap; a newcomer takes the place
    of the one sent at the lowest rate, only from an address holding more connections than its own."""
    held = {"a": 8, "b": 8, "honest": 1, "new": 1}
    bodies = [("a1", "a", 600.0), ("a2", "a", 900.0), ("b1", "b", 520.0), ("h", "honest", 10.0)]
    assert slowest_body(bodies, held.__getitem__, "new") == "b1"
    assert slowest_body(bodies, held.__getitem__, "a") is None  # its own address holds as many as any
    assert slowest_body([("h", "honest", 0.0)], held.__getitem__, "new") is None  # an address of one: not taken
    assert slowest_body([], held.__getitem__, "new") is None
