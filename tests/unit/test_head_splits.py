"""What the app would split in Python on every request is counted first (review26a H1): the query's parameters and
the cookies (``HttpLimits``), an RTT report's entries (``parse_rtt_report``), and the proxy forwards the query as
sent, less ``rtt``, without parsing it again (``forwarded_query``, review26a L2)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent import client_ids
from agent.client_ids import MAX_RTT_NODES, BadClientInput, parse_rtt_report
from agent.http_limits import MAX_COOKIES, MAX_QUERY_ESCAPES, MAX_QUERY_PARAMS, HttpLimits
from agent.serving.routes import forwarded_query


def run(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes, int]:
    """(status, body, how many times the app ran) for a GET of ``/v1/models/m`` through ``HttpLimits``."""
    calls = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal calls
        calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ran"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/v1/models/m", "raw_path": b"/v1/models/m",
             "query_string": query, "headers": headers or []}  # fmt: skip
    asyncio.run(HttpLimits(app, 2**20, 30.0, max_header_bytes=1 << 20)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), calls


def blank_parameters(n: int) -> bytes:
    return b"&".join([b"a"] * n)


def test_a_query_of_more_parameters_than_the_bound_gets_414_before_the_app_parses_it() -> None:
    assert run(blank_parameters(MAX_QUERY_PARAMS)) == (200, b"ran", 1)
    status, body, calls = run(blank_parameters(MAX_QUERY_PARAMS + 1))
    assert (status, calls) == (414, 0) and b"more than 100 query parameters" in body
    assert run(blank_parameters(8000))[::2] == (414, 0)  # the reviewer's head: 17-29 ms of parsing a request
    assert run(b"x=" + b";" * 5000)[::2] == (200, 1)  # parse_qsl splits at '&' only: one parameter, one step


def test_a_query_of_more_percent_escapes_than_the_bound_gets_414() -> None:
    """review26c: parse_qsl unquotes each escape in a Python loop: one parameter of 5,300 escapes (inside the head's
    16 KiB) was 6.8 ms of agent CPU a request against 1.4 ms."""
    assert run(b"a=" + b"%41" * MAX_QUERY_ESCAPES)[::2] == (200, 1)
    status, body, calls = run(b"a=" + b"%41" * (MAX_QUERY_ESCAPES + 1))
    assert (status, calls) == (414, 0) and b"more than 256 percent-escapes" in body
    assert run(b"a=" + b"%41" * 5300)[::2] == (414, 0)


def test_more_cookies_than_the_bound_get_431_counted_over_every_cookie_field() -> None:
    pairs = [b"k%d=v" % i for i in range(MAX_COOKIES)]
    assert run(headers=[(b"cookie", b"; ".join(pairs))])[::2] == (200, 1)
    split = [(b"cookie", b"; ".join(pairs[:100])), (b"cookie", b"; ".join(pairs[100:]))]
    assert run(headers=split)[::2] == (200, 1)
    status, body, calls = run(headers=[*split, (b"cookie", b"one=more")])
    assert (status, calls) == (431, 0) and b"more than 200 cookies" in body
    assert run(headers=[(b"cookie", b";" * 8000)])[::2] == (431, 0)
    assert run(headers=[(b"x-other", b";" * 8000)])[::2] == (200, 1)  # only Cookie is parsed into pairs


def test_an_rtt_report_of_more_entries_than_nodes_is_refused_before_any_entry_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed = 0
    entry = client_ids._rtt_entry

    def counting(part: str, sep: str) -> tuple[str, float]:
        nonlocal parsed
        parsed += 1
        return entry(part, sep)

    monkeypatch.setattr(client_ids, "_rtt_entry", counting)
    with pytest.raises(BadClientInput, match="over 64 entries"):
        parse_rtt_report(",".join(["a=0"] * 2000), None)  # one node 2,000 times: it never reached the node count
    with pytest.raises(BadClientInput, match="over 64 entries"):
        parse_rtt_report(None, ",".join(["a:0"] * (MAX_RTT_NODES + 2)))
    with pytest.raises(BadClientInput, match="over 64 entries"):  # one entry past the bound, even of one node
        parse_rtt_report(",".join(["a=0"] * (MAX_RTT_NODES + 1)), None)
    assert parsed == 0
    full = ",".join(f"n{i}=1" for i in range(MAX_RTT_NODES))
    assert len(parse_rtt_report(f", {full},", None)) == MAX_RTT_NODES  # a leading or trailing comma adds none
    assert parsed == MAX_RTT_NODES


@pytest.mark.parametrize(
    ("raw", "forwarded"),
    [
        (b"", ""),
        (b"flag", "flag"),  # re-encoded, it was "flag="
        (b"a=1;b=2", "a=1;b=2"),  # re-encoded, "a=1%3Bb%3D2"
        (b"x=%7E&y=a+b", "x=%7E&y=a+b"),  # escapes as the client sent them
        (b"rtt=n1:2&v=1", "v=1"),
        (b"v=1&rtt=n1:2&rtt=n2:3&w", "v=1&w"),
        (b"r%74t=n1:2&v=1", "v=1"),  # the key as the app decodes it
        (b"rttx=1&xrtt=2", "rttx=1&xrtt=2"),
        (b"a&&b", "a&&b"),
        ('q="é <x>"'.encode(), "q=%22%C3%A9%20%3Cx%3E%22"),  # what cannot be in a request target is escaped
    ],
)
def test_the_proxy_forwards_the_query_as_sent_less_the_rtt_report(raw: bytes, forwarded: str) -> None:
    assert forwarded_query(raw) == forwarded
