"""The client's checks on what agents answer (client/answers.py) and whom it gives its token (client/ops.py).

Review 11a (finding 5) drove ClientCore against a rogue agent found by mDNS: the client token went to it
over plain HTTP, and a 200 of the wrong shape (or not JSON) raised AttributeError / JSONDecodeError
instead of asking the next agent; a non-numeric Retry-After raised ValueError. Pure: no network.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import gzip
import json
import math
import random
import socket
import threading
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from agent.catalogue import MODEL_NAME
from agent.client_ids import MAX_RTT_NODES
from agent.serving import tfrest
from agent.settings import NODE_ID
from client import AnswerTooLarge, AsyncClient, Client, answers
from client.cli import cmd_cluster
from client.discovery import MAX_FOUND, keep
from client.errors import ClusterUnreachableError, NotReadyError, RequestError, UnknownModelError
from client.ops import (
    LISTED_NAMES,
    MAX_AGENTS,
    AnswerEncoded,
    Browse,
    Call,
    ClientCore,
    Endpoint,
    OverLimit,
    Probes,
    error_for,
)
from peerserve import jsonbound
from peerserve.cli import build_parser

TOKEN = "s3cret-client-token"
FOUND = ["http://192.168.1.2:8400", "http://192.168.1.20:8400"]  # what client.discovery.browse returns
NOW = 1_800_000_000.0


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


def endpoint(model: str = "half_plus_two", url: str = "http://10.0.0.5:8501", **extra: Any) -> dict[str, Any]:
    why = {"rtt_ms": 1.5, "rtt_source": "client", "exec_ms": 0.4, "estimated_ms": 1.9, "load": 0.0}
    return {"model": model, "node": "n1", "url": url, "why": why, **extra}


def member(node: str, url: str, status: str = "alive") -> dict[str, Any]:
    return {"node_id": node, "api_url": url, "status": status, "models": ["half_plus_two"],
            "mem_available_mb": 512.0, "gpu_load": None}  # fmt: skip


def drive(op: Any, answer: Callable[[Call], Any], found: list[str] | None = None) -> tuple[list[Call], Any]:
    """Run an op, answering each Call with ``answer(call)``: (the calls made, the result or the exception)."""
    calls: list[Call] = []
    try:
        request = next(op)
        while True:
            if isinstance(request, Browse):
                request = op.send(list(found or FOUND))
                continue
            if isinstance(request, Probes):  # answered in turn, as the sync client does
                calls.extend(request.calls)
                request = op.send([(answer(c), 0.001) for c in request.calls])
                continue
            calls.append(request)
            request = op.send(answer(request))
    except StopIteration as stop:
        return calls, stop.value
    except Exception as exc:  # the test looks at which
        return calls, exc


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSERVE_CLIENT_TOKEN", TOKEN)
    monkeypatch.delenv("PEERSERVE_AGENT", raising=False)
    monkeypatch.delenv("PEERSERVE_TRUST_DISCOVERED", raising=False)


# -- answers ----------------------------------------------------------------------------------------------
def test_the_client_reads_names_as_the_agents_write_them() -> None:
    assert answers.NODE_ID.pattern == NODE_ID.pattern
    assert answers.MODEL_NAME.pattern == MODEL_NAME.pattern
    assert answers.MAX_RTT_NODES == MAX_RTT_NODES


def test_an_endpoint_answer_is_checked_field_by_field() -> None:
    good = endpoint(alternatives=[endpoint(url="http://10.0.0.6:8501")], in_flight=0)
    chosen = Endpoint.from_json(good, "half_plus_two")
    assert chosen.url == "http://10.0.0.5:8501" and chosen.alternatives[0].url == "http://10.0.0.6:8501"
    assert chosen.why["estimated_ms"] == 1.9 and chosen.why["rtt_source"] == "client"
    bad: list[Any] = [
        ["not", "an", "endpoint"],
        "<html>",
        None,
        {**endpoint(), "model": "resnet"},  # not the model asked about
        {**endpoint(), "node": "n1\nX-Evil: 1"},
        {**endpoint(), "node": 7},
        {**endpoint(), "why": {"estimated_ms": "fast"}},  # the CLI formats it as a number
        {**endpoint(), "why": {"rtt_ms": math.inf}},
        {**endpoint(), "why": {f"k{i}": 1 for i in range(answers.MAX_WHY + 1)}},
        {**endpoint(), "why": {"note": "x" * (answers.MAX_TEXT + 1)}},
        {**endpoint(), "alternatives": [endpoint()] * (answers.MAX_ALTERNATIVES + 1)},
        {**endpoint(), "url": None},
    ]
    for url in ["ftp://10.0.0.5", "http://user:pw@10.0.0.5:1", "http://10.0.0.5:1/x", "http://10.0.0.5:1?q=1",
                "http://", "10.0.0.5:8501", "http://10.0.0.5:99999", "http://a b:1",
                "http://" + "a" * 300]:  # fmt: skip
        bad.append({**endpoint(), "url": url})
    for data in bad:
        with pytest.raises(answers.Malformed):
            Endpoint.from_json(data, "half_plus_two")
    other = answers.endpoint_fields({**endpoint(), "alternatives": [endpoint(model="other")]}, "half_plus_two")
    assert other["alternatives"] == [] and other["dropped"] == 1  # an alternative about another model: dropped
    for url in ["https://board-1.lan:8443", "http://10.0.0.5:8400", "http://[fd00::5]:8400", "http://[fe80::1%eth0]:8400",
                "http://board_1:80"]:  # fmt: skip
        assert answers.base_url(url + "/") == url


def test_services_and_cluster_answers_are_bounded() -> None:
    assert len(answers.endpoints([endpoint(model=f"m{i}") for i in range(answers.MAX_ENDPOINTS)])) == 1024
    with pytest.raises(answers.Malformed):
        answers.endpoints([endpoint()] * (answers.MAX_ENDPOINTS + 1))
    with pytest.raises(answers.Malformed):
        answers.endpoints({"model": "x"})
    members = [member(f"n{i}", f"http://10.0.{i // 250}.{i % 250}:8400") for i in range(answers.MAX_MEMBERS)]
    assert len(answers.cluster({"members": members})["members"]) == answers.MAX_MEMBERS
    for data in [
        {"members": [*members, member("x", "http://10.9.9.9:8400")]},
        {"members": "x"},  # review 11a's wrong shape
        {"members": [member("n1", "http://10.0.0.1:8400") | {"mem_available_mb": math.nan}]},
        {"members": [member("n1", "http://10.0.0.1:8400") | {"gpu_load": "busy"}]},
        {"members": [member("n1", "http://10.0.0.1:8400") | {"models": ["../etc"]}]},
        {"members": [member("n1", "javascript:alert(1)")]},
        {"members": [], "last_placement": {"objective_ms": "1"}},
        {"members": [], "last_placement": {"actions": 3}},
        [],
    ]:
        with pytest.raises(answers.Malformed):
            answers.cluster(data)
    assert answers.cluster({"members": [], "last_placement": None})["last_placement"] is None


def test_a_placement_without_actions_is_read_as_none(capsys: pytest.CaptureFixture[str]) -> None:
    """review27a L2: the agents' wire takes ``"actions": null`` (peerserve/wire.py), the client refused it: one such
    summary, which every agent keeps and shows on /cluster, made every agent's answer malformed (endpoint() and
    predict() raised ClusterUnreachableError). Now it is no actions, in the library and the CLI."""
    placement = {"actions": None, "objective_ms": 1.0}
    assert answers.cluster({"members": [], "last_placement": placement})["last_placement"]["actions"] == []
    data = json.dumps({"node_id": "n1", "leader": "n1", "term": 3, "members": [member("n1", "http://10.0.0.1:8400")],
                       "last_placement": placement}).encode()  # fmt: skip
    with Loopback(lambda path: whole("200 OK", data)) as agent:
        args = argparse.Namespace(agent=[agent.url], timeout=2.0, interface=None, trust_discovered=False, json=False)
        assert cmd_cluster(args) == 0
    assert "0 actions" in capsys.readouterr().out


def test_inference_answers_and_json_itself() -> None:
    assert answers.inference({"predictions": [2.5]}, "tfserving") == {"predictions": [2.5]}
    assert answers.inference({"outputs": []}, "v2") == {"outputs": []}
    for data, protocol in [([2.5], "tfserving"), ({"result": 1}, "tfserving"), ({"outputs": {}}, "v2"), ("x", "v2")]:
        with pytest.raises(answers.Malformed):
            answers.inference(data, protocol)
    for text in ["<html>captive portal</html>", '{"predictions": [NaN]}', '{"a": Infinity}', "\xff\xfe"]:
        with pytest.raises(answers.Malformed):
            answers.body(httpx.Response(200, content=text.encode("latin-1")))


def test_retry_after_is_seconds_or_a_date_within_bounds_and_never_raises() -> None:
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    cases = {
        "2": 2.0, " 7 ": 7.0, "0.5": 0.5, date: 30.0, email.utils.formatdate(NOW - 60, usegmt=True): 0.0,
        "-5": 0.0, "86400": answers.RETRY_AFTER_MAX_S, "1e400": 1.0, "nan": 1.0, "inf": 1.0, "soon": 1.0,
        "": 1.0, "Mon, 99 Foo 2026 99:99:99 GMT": 1.0, "Wed, 21 Oct 2015 07:28:00 -0000": 1.0,
        "9" * 999: answers.RETRY_AFTER_MAX_S,
    }  # fmt: skip
    for value, seconds in cases.items():
        assert answers.retry_after_s(value, NOW) == pytest.approx(seconds), value[:40]
    assert answers.retry_after_s(None, NOW) == 1.0
    busy = error_for(httpx.Response(503, json={"error": "x"}, headers={"Retry-After": "soon"}), NOW)
    assert isinstance(busy, NotReadyError) and busy.retry_after == 1.0
    stopping = error_for(
        httpx.Response(
            503,
            json={"error": "agent shutting down: m is not started here; retry on another agent"},
            headers={"Retry-After": "2", "X-Peerserve-Error": "shutting_down"},
        ),
        NOW,
    )
    assert isinstance(stopping, NotReadyError) and stopping.retry_after == 2.0 and "shutting down" in str(stopping)
    huge = error_for(httpx.Response(418, json={"error": "e" * 10_000}, headers={"X-Peerserve-Error": "c" * 999}))
    assert isinstance(huge, RequestError) and len(str(huge)) == 300 and huge.code == "c" * 64


# -- failover on bad answers ------------------------------------------------------------------------------
def test_a_malformed_200_fails_over_to_the_next_agent(token_env: None) -> None:
    honest = {"members": [member("n1", "http://192.168.1.20:8400")]}
    for garbage in [ok({"members": "x"}), ok(["not", "an", "endpoint"]),
                    httpx.Response(200, text="<html>captive portal</html>")]:  # fmt: skip
        core = ClientCore(None, "phone-1", None, 60.0, None)

        def answer(call: Call, garbage: httpx.Response = garbage) -> httpx.Response:
            if call.url.startswith(FOUND[0]):
                return garbage
            if call.url.endswith("/cluster"):
                return ok(honest)
            if call.url.endswith("/health"):
                return ok({"status": "ok"})
            return ok(endpoint())

        _, result = drive(core.endpoint("half_plus_two"), answer)
        assert isinstance(result, Endpoint) and result.node == "n1", result
        assert core.agents[0] == FOUND[1]  # the honest agent is asked first from now on


def test_only_bad_answers_is_cluster_unreachable_and_errors_still_raise() -> None:
    core = ClientCore(FOUND, "me", None, 60.0, None)
    _, result = drive(core.cluster(), lambda call: ok({"members": "x"}))
    assert isinstance(result, ClusterUnreachableError) and "members" in str(result)
    unknown = httpx.Response(404, json={"error": "no"}, headers={"X-Peerserve-Error": "unknown_model"})
    calls, result = drive(ClientCore(FOUND, "me", None, 60.0, None).cluster(), lambda call: unknown)
    assert isinstance(result, UnknownModelError) and len(calls) == 1


def test_a_server_answering_garbage_is_skipped_for_the_alternative_then_the_proxy() -> None:
    core = ClientCore(["http://a:8400"], "me", None, 60.0, None)
    chosen = endpoint(url="http://s1:8501", alternatives=[endpoint(url="http://s2:8501")])

    def answer(call: Call) -> httpx.Response:
        if call.url.endswith("/cluster"):
            return ok({"members": []})
        if call.url.endswith("/services/half_plus_two"):
            return ok(chosen)
        if call.url.startswith("http://s1"):
            return httpx.Response(200, text="<html>")
        if call.url.startswith("http://s2"):
            return ok({"unexpected": 1})
        return ok({"predictions": [2.5]})  # the agent's proxy

    calls, result = drive(core.predict("half_plus_two", [1.0], None, False), answer)
    assert result == {"predictions": [2.5]}
    assert [c.url for c in calls if c.method == "POST"] == [
        "http://s1:8501/v1/models/half_plus_two:predict", "http://s2:8501/v1/models/half_plus_two:predict",
        "http://a:8400/services/half_plus_two/v1/models/half_plus_two:predict",
    ]  # fmt: skip
    assert all(c.limit == answers.ANSWER_LIMIT for c in calls if c.method == "POST")


# -- the token ----------------------------------------------------------------------------------------
def test_the_token_never_goes_to_an_agent_found_by_mdns(token_env: None) -> None:
    core = ClientCore(None, "phone-1", None, 60.0, None)
    calls, result = drive(core.predict("half_plus_two", [1.0], None, False), review_rogue)
    assert result == {"predictions": [666.0]}  # mDNS + HTTP cannot tell a rogue (docs/security.md)
    assert calls and all("Authorization" not in c.headers for c in calls)
    assert TOKEN not in repr(calls)


def review_rogue(call: Call) -> httpx.Response:
    """Review 11a's rogue agent at FOUND[0]: an empty cluster, and an endpoint of its own."""
    if call.url.startswith("http://192.168.1.2:"):
        if call.url.endswith("/cluster"):
            return ok({"members": []})
        if "/services/" in call.url:
            return ok(endpoint(url="http://192.168.1.2:9999"))
        return ok({"predictions": [666.0]})
    return ok({"predictions": [2.5]})


def test_a_token_cluster_found_by_mdns_says_how_to_send_the_token(token_env: None) -> None:
    refused = httpx.Response(401, json={"error": "client token required"}, headers={"WWW-Authenticate": "Bearer"})
    calls, result = drive(ClientCore(None, "me", None, 60.0, None).cluster(), lambda call: refused)
    assert isinstance(result, ClusterUnreachableError) and "PEERSERVE_TRUST_DISCOVERED" in str(result)
    assert len(calls) == 2  # both agents asked; neither got the token
    opted = ClientCore(None, "me", None, 60.0, None, trust_discovered=True)
    calls, result = drive(opted.cluster(), lambda call: ok({"members": []}))
    assert calls[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_the_opt_in_is_an_explicit_flag_or_variable(token_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for value, trusted in [("1", True), ("true", True), ("yes", True), ("0", False), ("", False), ("no", False)]:
        monkeypatch.setenv("PEERSERVE_TRUST_DISCOVERED", value)
        assert ClientCore(None, "me", None, 60.0, None).trusts(FOUND[0]) is trusted
    monkeypatch.setenv("PEERSERVE_TRUST_DISCOVERED", "1")
    assert not ClientCore(None, "me", None, 60.0, None, trust_discovered=False).trusts(FOUND[0])


def test_named_agents_and_the_members_they_list_get_the_token(token_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    named = "http://10.0.0.5:8400"
    cluster = {"members": [member("a", named), member("b", "http://10.0.0.6:8400"),
                           member("c", "http://10.0.0.7:8400", "dead")]}  # fmt: skip
    core = ClientCore([named + "/"], "me", None, 60.0, None)
    core.learn(answers.cluster(cluster), named)
    assert core.agents == [named, "http://10.0.0.6:8400"]  # the dead member is no failover target
    assert core.headers(named)["Authorization"] == core.headers("http://10.0.0.6:8400")["Authorization"]
    assert "Authorization" not in core.headers() and "Authorization" not in core.headers("http://10.0.0.7:8400")
    monkeypatch.setenv("PEERSERVE_AGENT", named)  # the variable names agents too
    assert ClientCore(None, "me", None, 60.0, None).trusts(named)
    # a member listed by an agent that is not trusted is not trusted either
    stranger = ClientCore([named], "me", None, 60.0, None)
    stranger.learn(answers.cluster({"members": [member("x", "http://10.0.0.66:8400")]}), "http://10.0.0.9:8400")
    assert "http://10.0.0.66:8400" in stranger.agents and not stranger.trusts("http://10.0.0.66:8400")


def test_over_https_only_https_members_are_vouched_for(token_env: None) -> None:
    named = "https://board-1.lan:8443"
    core = ClientCore([named], "me", None, 60.0, None)
    core.learn(answers.cluster({"members": [member("a", "http://10.0.0.5:8400"),
                                            member("b", "https://board-2.lan:8443")]}), named)  # fmt: skip
    assert core.trusts("https://board-2.lan:8443") and not core.trusts("http://10.0.0.5:8400")


def test_one_cluster_answer_gives_at_most_a_few_members_by_hostname(token_env: None) -> None:
    """review15c F2: a member's /cluster listing 16 hostnames that hang took every lookup slot of the process (each
    probed or failed over to); at most LISTED_NAMES of one answer's members are taken by hostname, members by
    address all (up to answers.MAX_RTT_NODES)."""
    named = "http://10.0.0.5:8400"
    core = ClientCore([named], "me", None, 60.0, None)
    members = [member(f"h{i}", f"http://slow{i}.test:{8400 + i}") for i in range(16)]
    members += [member(f"a{i}", f"http://10.0.1.{i}:8400") for i in range(8)]
    members += [member("v6", "http://[fd00::7]:8400")]
    core.learn(answers.cluster({"members": members}), named)
    urls = set(core.nodes.values())
    assert {u for u in urls if "slow" in u} == {f"http://slow{i}.test:{8400 + i}" for i in range(LISTED_NAMES)}
    assert len(urls) == LISTED_NAMES + 9 and "http://[fd00::7]:8400" in urls
    assert len([a for a in core.agents if "slow" in a]) == LISTED_NAMES


def test_known_agents_nodes_and_vouched_urls_are_bounded(token_env: None) -> None:
    named = "http://10.0.0.5:8400"
    core = ClientCore([named], "me", None, 60.0, None)
    for round_ in range(6):  # each /cluster answer lists 256 new members
        members = [member(f"n{i}", f"http://10.{round_}.{i // 250}.{i % 250}:8400") for i in range(256)]
        core.learn(answers.cluster({"members": members}), named)
        assert len(core.nodes) == answers.MAX_RTT_NODES  # probed and reported (an agent refuses more)
        assert len(core.agents) <= MAX_AGENTS + 1 and core.agents[0] == named
        assert set(core.nodes.values()) <= set(core.agents)  # the members just learned stay failover targets
        assert len(core.vouched) <= MAX_AGENTS
    flood = [f"http://10.1.{i // 250}.{i % 250}:8400" for i in range(1000)]
    empty = ClientCore([], "me", None, 60.0, None)
    empty.agents = []
    _, found = drive(empty.ordered_agents(), lambda call: ok({}), flood)
    assert len(found) == MAX_AGENTS


def test_one_browse_keeps_a_bounded_number_of_agents() -> None:
    found: dict[str, str] = {}
    for i in range(MAX_FOUND + 50):
        keep(found, f"n{i}._peerserve._tcp.local.", [f"10.0.{i // 250}.{i % 250}"], 8400)
    assert len(found) == MAX_FOUND
    keep(found, "n0._peerserve._tcp.local.", ["10.9.9.9"], 8401)  # a known name still updates
    assert found["n0._peerserve._tcp.local."] == "http://10.9.9.9:8401"
    keep(found, "new._peerserve._tcp.local.", [], 8400)
    assert "new._peerserve._tcp.local." not in found


# -- the shells read at most a call's limit ---------------------------------------------------------------
def bomb() -> bytes:
    """A gzip body of ~5 KB that decodes to CONTROL_LIMIT + 1 MiB."""
    return gzip.compress(b" " * (answers.CONTROL_LIMIT + 2**20))


def endless(asynchronous: bool) -> Callable[[httpx.Request], httpx.Response]:
    """The first agent answers a chunked body without end or a gzip bomb; the second answers properly."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10_000):
            yield b"[" + b" " * 65536

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "good":
            return httpx.Response(200, json={"node_id": "good", "members": []})
        if request.url.path == "/cluster":  # chunked, 640 MiB if read
            return httpx.Response(200, content=chunks() if asynchronous else iter([b"[" + b" " * 65536] * 10_000))
        return httpx.Response(200, content=bomb(), headers={"Content-Encoding": "gzip"})

    return answer


def test_the_sync_client_stops_reading_an_answer_past_its_limit() -> None:
    for path in ("/cluster", "/stats/node"):
        with Client(agents=["http://rogue:1", "http://good:1"], transport=httpx.MockTransport(endless(False))) as c:
            result = c._run(c.core.ask("GET", path, answers.cluster))
            assert result[0] == "http://good:1"
            r = c._call(Call("GET", "http://rogue:1" + path))
            assert isinstance(r, OverLimit if path == "/cluster" else AnswerEncoded)


def test_the_async_client_stops_reading_an_answer_past_its_limit() -> None:
    async def main() -> None:
        for path in ("/cluster", "/stats/node"):
            async with AsyncClient(
                agents=["http://rogue:1", "http://good:1"], transport=httpx.MockTransport(endless(True))
            ) as c:
                result = await c._run(c.core.ask("GET", path, answers.cluster))
                assert result[0] == "http://good:1"
                r = await c._call(Call("GET", "http://rogue:1" + path))
                assert isinstance(r, OverLimit if path == "/cluster" else AnswerEncoded)
        async with AsyncClient(transport=httpx.MockTransport(endless(True))) as c:  # within the limit: read whole
            r = await c._call(Call("GET", "http://good:1/cluster"))
            assert isinstance(r, httpx.Response) and r.json()["node_id"] == "good"

    asyncio.run(main())


# -- on the wire: a real loopback server (review11c) ------------------------------------------------------
def brotli_bomb() -> bytes:
    """A brotli body (a few bytes) that decodes to CONTROL_LIMIT + 1 MiB; the gzip bomb where brotli is not
    installed (the client must refuse it before decoding either way)."""
    try:
        import brotli  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return bomb()
    return bytes(brotli.compress(b" " * (answers.CONTROL_LIMIT + 2**20), quality=5))


def cl_te(chunks: int) -> Iterator[bytes]:
    """A length of 100 declared beside chunked framing, then ``chunks`` chunks of 1 MiB (the length is ignored:
    RFC 9112 6.3)."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
    yield b"Transfer-Encoding: chunked\r\n\r\n"
    for _ in range(chunks):
        yield b"100000\r\n" + b" " * 2**20 + b"\r\n"
    yield b"11\r\n" + b'{"members": []}  ' + b"\r\n0\r\n\r\n"


def whole(status: str, body: bytes, *headers: str) -> Iterator[bytes]:
    head = "".join(f"{h}\r\n" for h in (*headers, f"Content-Length: {len(body)}", "Connection: close"))
    yield f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{head}\r\n".encode() + body


class Loopback:
    """An HTTP server on 127.0.0.1 (a free port) that answers each request, one per connection, with the raw
    bytes ``answer(path)`` gives, and keeps the request heads it got."""

    def __init__(self, answer: Callable[[str], Iterator[bytes]]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer = answer
        self.heads: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        data = conn.recv(65536)
                        if not data:
                            break
                        head += data
                    self.heads.append(head)
                    for part in self.answer(head.split(b" ")[1].decode()):
                        conn.sendall(part)
                except (OSError, IndexError):
                    continue  # the client stopped reading: what the tests want

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5.0)
        self.sock.close()


def rogue(path: str) -> Iterator[bytes]:
    """/cluster: a brotli bomb; /services: CL 100 + 64 MiB chunked; /stats/node: CL + TE without end;
    /small: CL 100 + a small chunked body (read by its chunks)."""
    if path == "/cluster":
        return whole("200 OK", brotli_bomb(), "Content-Encoding: br")
    if path == "/services":
        return cl_te(64)
    if path == "/small":
        return cl_te(0)
    return cl_te(10**6)


def honest(path: str) -> Iterator[bytes]:
    if path == "/cluster":
        return whole("200 OK", b'{"node_id": "good", "members": []}')
    return whole("200 OK", b"[]")


def test_on_the_wire_no_encoding_is_asked_for_or_decoded_and_te_frames_the_answer() -> None:
    with Loopback(rogue) as bad, Loopback(honest) as good, Client(agents=[bad.url, good.url]) as c:
        assert c.cluster()["node_id"] == "good"  # the brotli bomb failed over
        assert c._run(c.core.ask("GET", "/services", answers.services))[0] == good.url
        assert isinstance(c._call(Call("GET", bad.url + "/cluster")), AnswerEncoded)
        for path in ("/services", "/stats/node"):  # 64 MiB, and without end: stopped past 4 MiB
            assert isinstance(c._call(Call("GET", bad.url + path)), OverLimit)
        small = c._call(Call("GET", bad.url + "/small"))
        assert isinstance(small, httpx.Response) and answers.body(small) == {"members": []}
        assert bad.heads and all(b"\r\naccept-encoding: identity\r\n" in h.lower() for h in bad.heads)


def test_on_the_wire_the_async_client_too() -> None:
    async def main() -> None:
        with Loopback(rogue) as bad, Loopback(honest) as good:
            async with AsyncClient(agents=[bad.url, good.url]) as c:
                assert (await c.cluster())["node_id"] == "good"
                assert isinstance(await c._call(Call("GET", bad.url + "/cluster")), AnswerEncoded)
                for path in ("/services", "/stats/node"):
                    assert isinstance(await c._call(Call("GET", bad.url + path)), OverLimit)
                small = await c._call(Call("GET", bad.url + "/small"))
                assert isinstance(small, httpx.Response) and answers.body(small) == {"members": []}
            assert all(b"\r\naccept-encoding: identity\r\n" in h.lower() for h in bad.heads)

    asyncio.run(main())


def test_any_encoding_but_identity_is_a_failed_call() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        coding = request.url.path.strip("/")  # a stream: httpx.Response decodes bytes content at once
        return httpx.Response(200, content=iter([b"[]"]), headers={"Content-Encoding": coding} if coding else {})

    with Client(transport=httpx.MockTransport(answer)) as c:
        for coding in ("gzip", "deflate", "br", "zstd", "identity, gzip", "x-unknown"):
            assert isinstance(c._call(Call("GET", f"http://a:1/{coding}")), AnswerEncoded), coding
        for coding in ("", "identity", "IDENTITY"):
            r = c._call(Call("GET", f"http://a:1/{coding}"))
            assert isinstance(r, httpx.Response) and r.content == b"[]", coding


# -- one entry the client cannot use does not spoil the answer (review11c) ---------------------------------
def test_a_member_or_endpoint_the_client_refuses_is_dropped_and_counted() -> None:
    good = [member("n1", "http://10.0.0.1:8400"), member("n2", "http://10.0.0.2:8400")]
    for odd in [member("n3", "http://10.0.0.9:8000/x"), member("n3", "http://u@10.0.0.9:8000"),
                member("n3", "http://10.0.0.9:8000?a"), member("n3", "http://10.0.0.9:8000") | {"models": ["a..b"]},
                member("n3", "http://10.0.0.9:8000") | {"models": ["m" * 100]}, "x"]:  # fmt: skip
        data = answers.cluster({"members": [good[0], odd, good[1]]})
        assert [m["node_id"] for m in data["members"]] == ["n1", "n2"] and data["members_dropped"] == 1
    assert answers.cluster({"members": []})["members_dropped"] == 0
    with pytest.raises(answers.Malformed):  # nothing usable: the next agent is asked
        answers.cluster({"members": [member("n3", "http://10.0.0.9:8000/x")] * answers.MAX_MEMBERS})
    bad = endpoint(url="http://10.0.0.9:8501/x")
    second = endpoint(model="m2", alternatives=[endpoint(model="m2"), bad])
    listed, dropped = answers.services([endpoint(), bad, second])
    assert [e["model"] for e in listed] == ["half_plus_two", "m2"] and dropped == 2  # one endpoint, one alternative
    assert len(listed[1]["alternatives"]) == 1
    assert answers.endpoint_fields(endpoint(alternatives=[bad, bad]), None)["dropped"] == 2  # the endpoint kept
    with pytest.raises(answers.Malformed):
        answers.services([bad, bad])
    with pytest.raises(answers.Malformed):  # the one endpoint asked for is bad: the next agent is asked
        answers.endpoint_fields(bad, "half_plus_two")


def test_one_bad_member_everywhere_still_lets_predict_work() -> None:
    odd = member("n2", "http://10.0.0.9:8000/x")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/cluster":
            return ok({"node_id": "n1", "members": [member("n1", "http://127.0.0.1:1"), odd]})
        if request.url.path == "/health":
            return ok({"ok": True})
        if request.url.path == "/services/half_plus_two":
            return ok(endpoint(url="http://127.0.0.1:2", alternatives=[endpoint(url="http://h:1/p")]))
        if request.url.path.endswith(":predict"):
            return ok({"predictions": [2.5]})
        return httpx.Response(404, json={"error": "no"})

    with Client(agents=["http://127.0.0.1:1", "http://127.0.0.3:1"], transport=httpx.MockTransport(answer)) as c:
        assert c.predict("half_plus_two", instances=[1.0]) == {"predictions": [2.5]}
        assert c.core.nodes == {"n1": "http://127.0.0.1:1"}
        assert c.core.dropped == 2  # the member, the alternative
        assert c.cluster()["members_dropped"] == 1 and c.core.dropped == 3


def test_the_cli_says_how_many_members_it_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    listed = [member("n1", "http://10.0.0.1:8400"), member("n2", "http://10.0.0.2:8400/x")]
    data = json.dumps({"node_id": "n1", "leader": "n1", "term": 3, "members": listed}).encode()
    with Loopback(lambda path: whole("200 OK", data)) as agent:
        args = argparse.Namespace(agent=[agent.url], timeout=2.0, interface=None, trust_discovered=False, json=False)
        assert cmd_cluster(args) == 0
    out = capsys.readouterr().out
    assert "n1 " in out and "n2" not in out and "(1 more members left out" in out


ESC = "\x1b"
# review27a M1: what a rogue agent found by mDNS put in its answers: a window title, a clear screen and a fake red
# leader, OSC 52 (writes the operator's clipboard), a concealed rest of the screen, a cursor-up overwrite, BEL, CR
TITLE = f"{ESC}]0;PWNED{ESC}\\{ESC}[2J{ESC}[H{ESC}[31mFAKE LEADER{ESC}[0m\a\rspoofed"
OSC52 = f"{ESC}]52;c;ZWNobyBoYWNrZWQ={ESC}\\"
ROGUE_CLUSTER = {
    "node_id": TITLE, "leader": TITLE, "term": OSC52, "role": "leader",
    "members": [member("n1", "http://10.0.0.1:8400") | {"status": f"{ESC}[8m\a"}],
    "last_placement": {"term": OSC52, "method": f"{ESC}[1A{ESC}[2Kspoofed line\r", "mode": "x" * 10_000,
                       "requests": "\a" * 5, "actions": []},
}  # fmt: skip
# review27c I3: the answering agent's own fields honest, the rest as a leader's summary relayed to every agent
ROGUE_RELAYED = {
    **ROGUE_CLUSTER, "node_id": "n1", "leader": "n1", "term": 3,
    # not alive: the client asks only the agent named (10.0.0.x may answer in a test's network)
    "members": [member("n1", "http://10.0.0.1:8400") | {"status": "suspect"},
                member("n2", "http://10.0.0.2:8400") | {"status": "\u3164"}],
}  # fmt: skip


def clean(text: str) -> bool:
    """No control character at all but the line ends print() writes."""
    return all(ch.isprintable() for ch in text.replace("\n", ""))


def escaping(path: str) -> Iterator[bytes]:
    if path == "/cluster":
        return whole("200 OK", json.dumps(ROGUE_RELAYED).encode())
    if path.startswith("/services/nosuch"):  # the agent's error message, printed by peerserve.cli.main
        return whole("404 Not Found", json.dumps({"error": TITLE + OSC52}).encode(), "X-Peerserve-Error: unknown_model")
    if path.startswith("/services/busy"):
        return whole("500 Internal Server Error", json.dumps({"error": TITLE}).encode())
    why = {"rtt_ms": 1.0, "exec_ms": 1.0, "estimated_ms": 2.0, "rtt_source": OSC52 + TITLE}
    return whole("200 OK", json.dumps({**endpoint(), "why": why}).encode())


def test_the_text_output_shows_no_control_character_an_agent_sent(capsys: pytest.CaptureFixture[str]) -> None:
    """review27a M1: leader, term, node_id, member status, the placement's term/method/mode/requests, rtt_source
    and the agent's error message reached the terminal raw (ESC, BEL, CR, OSC 52); now each is shown with ``?``
    for them, and the fields nothing bounds are cut to 64 characters. --json stays JSON (its escapes).
    review27c I3: since, the cluster answer's fields are checked for their shape: the agent's own refuse the answer
    (no agent answered usable), the placement's relayed ones are shown as '-', a member's status drops it."""
    from peerserve.cli import main

    rogue = Loopback(lambda path: whole("200 OK", json.dumps(ROGUE_CLUSTER).encode()))
    with Loopback(escaping) as agent, rogue:
        assert main(["cluster", "--agent", rogue.url, "--timeout", "2"]) == 1
        err = capsys.readouterr().err
        assert clean(err) and "node_id: not a node id" in err
        assert main(["cluster", "--agent", agent.url, "--timeout", "2"]) == 0
        out = capsys.readouterr().out
        assert clean(out) and "leader n1  term 3" in out and "spoofed" not in out and "xxx" not in out
        assert "last placement: term - - mode -" in out and ", - requests" in out
        assert "n2" not in out and "(1 more members left out" in out
        assert main(["endpoints", "half_plus_two", "--agent", agent.url, "--timeout", "2"]) == 0
        out = capsys.readouterr().out
        assert clean(out) and "]52;c;" in out
        assert main(["endpoints", "nosuch", "--agent", agent.url, "--timeout", "2"]) == 2
        err = capsys.readouterr().err
        assert clean(err) and "PWNED" in err
        assert main(["endpoints", "busy", "--agent", agent.url, "--timeout", "2"]) == 1
        err = capsys.readouterr().err
        assert clean(err) and "FAKE LEADER" in err
        assert main(["cluster", "--agent", agent.url, "--timeout", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["last_placement"]["method"] is None


# review27c I3: characters str.isprintable takes that a terminal shows blank or not at all
INVISIBLE = ["\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u034f", "\u17b4", "\u17b5",
             *map(chr, range(0x180B, 0x1810)), *map(chr, range(0xFE00, 0xFE10)),
             "\U000e0100", "\U000e01ef"]  # fmt: skip


@pytest.mark.parametrize("ch", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_printable_shows_the_invisible_fillers_isprintable_takes(ch: str) -> None:
    from peerserve.errors import printable

    assert printable(f"n1{ch}x") == "n1?x"
    assert printable("n1\u200b\xa0x") == "n1??x"  # Cf and Zs: isprintable's own refusals, still refused


@pytest.mark.parametrize(
    "fields",
    [{"leader": "\u3164"}, {"leader": "n1\u2800"}, {"leader": "n1 "}, {"leader": ""}, {"node_id": "\u115f"},
     {"node_id": 5}, {"term": "5"}, {"term": True}, {"term": -1}, {"term": 2**63}, {"term": 1.5}, {"term": "\u3164"}],
)  # fmt: skip
def test_a_cluster_answer_whose_own_leader_term_or_node_id_is_of_another_shape_is_refused(fields: dict) -> None:
    """review27c I3: only ``str.isprintable`` stood between them and the terminal, and it takes U+3164 (a Hangul
    filler), U+2800 (the braille blank): a leader or term shown blank or padded. The answering agent's own fields are
    its settings' and the wire's (an honest agent's are always of this shape): another shape refuses the answer."""
    honest = {"node_id": "n1", "leader": "n1", "term": 3, "members": [member("n1", "http://10.0.0.1:8400")]}
    assert answers.cluster(honest)["leader"] == "n1"
    assert answers.cluster(honest | {"leader": None, "term": None})["term"] is None  # no leader yet
    with pytest.raises(answers.Malformed):
        answers.cluster(honest | fields)


def test_a_relayed_placement_of_another_shape_is_shown_as_null_and_a_member_so_dropped() -> None:
    """review27c I3: the placement's method, mode, status, term and request count are the leader's summary, relayed
    to every agent's /cluster as sent: one of another shape is null (refusing it would refuse every agent's answer,
    as review27a L2's ``"actions": null`` did). A member whose status is not a word is dropped (members are)."""
    honest = {"term": 3, "method": "least-loaded", "mode": "1", "status": "optimal", "requests": 12, "actions": []}
    assert answers.cluster({"members": [], "last_placement": honest})["last_placement"] == honest
    odd = {"term": "3", "method": "ipopt\u3164", "mode": "x" * 65, "status": "\u2800", "requests": -1, "actions": []}
    shown = answers.cluster({"members": [], "last_placement": odd})["last_placement"]
    assert {k: shown[k] for k in ("term", "method", "mode", "status", "requests")} == dict.fromkeys(
        ("term", "method", "mode", "status", "requests")
    )
    listed = [member("n1", "http://10.0.0.1:8400"), member("n2", "http://10.0.0.2:8400") | {"status": "aliv\u034fe"}]
    data = answers.cluster({"members": listed})
    assert [m["node_id"] for m in data["members"]] == ["n1"] and data["members_dropped"] == 1


@pytest.mark.parametrize("data", ['{"instances": null}', '{"inputs": null}', '{"instances": [1], "inputs": [1]}'])
def test_predict_data_with_neither_or_both_is_a_usage_error(data: str, capsys: pytest.CaptureFixture[str]) -> None:
    """review27a L4: client/ops.py's ValueError ended these in a traceback, exit 1; now a usage error, exit 2,
    before any agent is asked (none listens at port 9)."""
    from peerserve.cli import main

    assert main(["predict", "half_plus_two", "--data", data, "--agent", "http://127.0.0.1:9"]) == 2
    assert 'exactly one of "instances" and "inputs"' in capsys.readouterr().err


# -- hostile answers: whatever their shape the client fails over; parsing is bounded (review 12b) ----------
HUGE = int("1" + "0" * 400)  # JSON has no bound on an integer's digits; float() of this one overflows
HONEST_CLUSTER = {"node_id": "good", "members": [member("n1", FOUND[1])]}


def raw(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body)


def hostile_control() -> dict[str, list[bytes]]:
    """Per path, the answers review 12b made the client raise on (or parse whole, up to 4 MiB): nesting past
    json.loads' recursion, a 400-digit integer where a number is read, and more values than CONTROL_VALUES."""
    deep = b"[" * 100_000
    over = b"[" + b"{}," * answers.CONTROL_VALUES + b"{}]"
    services = [
        deep, over, json.dumps([endpoint() | {"why": {"rtt_ms": HUGE}}]).encode(),
        json.dumps([endpoint() | {"why": {"load": HUGE}}]).encode(),
    ]  # fmt: skip
    service = [deep, over, json.dumps(endpoint() | {"why": {"estimated_ms": HUGE}}).encode()]
    cluster = [
        deep, over,
        json.dumps({"members": [member("n1", FOUND[1]) | {"mem_available_mb": HUGE}]}).encode(),
        json.dumps({"members": [member("n1", FOUND[1]) | {"gpu_load": -HUGE}]}).encode(),
        json.dumps({"members": [], "last_placement": {"objective_ms": HUGE}}).encode(),
    ]  # fmt: skip
    return {"/services": services, "/services/half_plus_two": service, "/cluster": cluster}


def test_a_hostile_control_answer_of_any_shape_fails_over_to_the_good_agent() -> None:
    for path, bodies in hostile_control().items():
        for hostile in bodies:

            def answer(call: Call, hostile: bytes = hostile, path: str = path) -> httpx.Response:
                asked = call.url.split(":8400", 1)[1]
                if call.url.startswith(FOUND[0]) and asked == path:
                    return raw(hostile)
                if asked == "/cluster":
                    return ok(HONEST_CLUSTER)
                if asked == "/health":
                    return ok({"status": "ok"})
                return ok([endpoint()] if asked == "/services" else endpoint())

            core = ClientCore(list(FOUND), "me", None, 60.0, None)
            op = {"/services": core.endpoints(), "/cluster": core.cluster()}.get(path, core.endpoint("half_plus_two"))
            calls, result = drive(op, answer)
            assert FOUND[0] + path in [c.url for c in calls], (path, hostile[:40])  # the rogue was asked
            assert not isinstance(result, Exception), (path, hostile[:40], result)
            if path == "/cluster":
                assert [m["node_id"] for m in result["members"]] == ["n1"]
            else:
                assert (result[0] if path == "/services" else result).url == "http://10.0.0.5:8501"
            assert core.agents[0] == FOUND[1]  # the good agent answered, and is asked first from now on


def test_a_hostile_inference_answer_fails_over_to_the_alternative_then_the_proxy() -> None:
    """Garbage is a dead server; an answer over the client's bounds is not (it raises: see the tests below)."""
    deep = b"[" * 100_000
    chosen = endpoint(url="http://s1:8501", alternatives=[endpoint(url="http://s2:8501")])
    for first, second in [(deep, b"<html>"), (b"<html>", deep), (deep, b'{"unexpected": 1}')]:

        def answer(call: Call, first: bytes = first, second: bytes = second) -> httpx.Response:
            if call.url.endswith("/cluster"):
                return ok({"members": []})
            if call.url.endswith("/services/half_plus_two"):
                return ok(chosen)
            return raw(
                first if call.url.startswith("http://s1") else second if "s2" in call.url else b'{"predictions": [2.5]}'
            )

        calls, result = drive(
            ClientCore(["http://a:8400"], "me", None, 60.0, None).predict("half_plus_two", [1.0], None, False), answer
        )
        assert result == {"predictions": [2.5]}
        assert [c.url.split("/")[2] for c in calls if c.method == "POST"] == ["s1:8501", "s2:8501", "a:8400"]


def test_checking_an_answer_is_total() -> None:
    """Any exception a check raises, foreseen or not, is Malformed: the next agent or server is asked."""
    for error in (RecursionError, OverflowError, KeyError, ZeroDivisionError, TypeError, MemoryError):

        def parse(data: Any, error: type[Exception] = error) -> Any:
            raise error("a shape no check foresaw")

        with pytest.raises(answers.Malformed, match=error.__name__):
            answers.checked(ok({"a": 1}), parse)
    core = ClientCore(list(FOUND), "me", None, 60.0, None)
    calls, result = drive(
        core.ask("GET", "/x", lambda d: 10 // d["n"]), lambda c: ok({"n": 0 if FOUND[0] in c.url else 5})
    )
    assert result == (FOUND[1], 2) and len(calls) == 2


def test_answers_are_counted_before_they_are_parsed_and_held_to_a_bound() -> None:
    assert answers.values_at_most is jsonbound.values_at_most is tfrest.values_at_most  # one count, shared
    for limit, count, weight in [(answers.CONTROL_VALUES, jsonbound.values_at_most, 0),
                                 (answers.ANSWER_VALUES, jsonbound.cost_at_most, 2)]:  # fmt: skip
        at = b"[" + b"0," * (limit - 2 - weight) + b"0]"  # exactly ``limit`` values (the [ weighs 2 more)
        assert count(at) == limit and len(answers.body(raw(at), limit, count)) == limit - 1 - weight
        with pytest.raises(answers.TooLarge, match=f"more than {limit} JSON values"):
            answers.body(raw(b"[0," + at[1:]), limit, count)
    with pytest.raises(answers.Malformed, match=f"more than {answers.CONTROL_VALUES} JSON"):  # the default
        answers.checked(raw(b"[" + b"0," * answers.CONTROL_VALUES + b"0]"), lambda d: d)
    flood = raw(b"[" + b"{}," * (4 * 2**20 // 3) + b"{}]")  # review 12b: 4 MiB of {} parsed was +115 MiB RSS
    tracemalloc.start()
    try:  # refused before anything is built
        with pytest.raises(answers.Malformed, match="JSON values"):
            answers.checked(flood, answers.services)
        assert tracemalloc.get_traced_memory()[1] < 64 * 1024
    finally:
        tracemalloc.stop()
    endpoints = [
        endpoint(model=f"m{i}", alternatives=[endpoint(model=f"m{i}")] * 3) for i in range(answers.MAX_ENDPOINTS)
    ]
    models = {"models": [f"m{j}" for j in range(answers.MAX_MODELS)]}
    members = [member(f"n{i}", f"http://10.0.{i // 250}.{i % 250}:8400") | models for i in range(answers.MAX_MEMBERS)]
    for largest in (endpoints, {"node_id": "n0", "members": members}):  # the largest answers the checks let through
        assert jsonbound.values_at_most(json.dumps(largest).encode()) < answers.CONTROL_VALUES


def test_an_alternatives_own_alternatives_are_not_read() -> None:
    nested = endpoint(url="http://10.0.0.9:8501")
    for _ in range(450):  # json.loads reads it; checking it level by level raised RecursionError
        nested = endpoint(alternatives=[nested])
    fields = answers.checked(raw(json.dumps(nested).encode()), lambda d: answers.endpoint_fields(d, "half_plus_two"))
    assert len(fields["alternatives"]) == 1 and fields["alternatives"][0]["alternatives"] == []


def test_an_error_answer_is_quoted_not_parsed_past_the_bound() -> None:
    huge = raw(b'{"error": [' + b"{}," * (4 * 2**20 // 3) + b"{}]}", 418)
    error = error_for(huge)
    assert isinstance(error, RequestError) and str(error) == huge.content[:300].decode()
    for body in (b'{"error": {"code": 7}}', b"[" * 100_000, b'{"error": ' + b"[" * 990 + b"]" * 990 + b"}"):
        error = error_for(raw(body, 400))
        assert isinstance(error, RequestError) and str(error) == body[:300].decode()
    assert str(error_for(raw('{"error": "quota – exceeded"}'.encode(), 429))) == "quota – exceeded"


def rogue12b(path: str) -> Iterator[bytes]:
    """review 12b's rogue agent (and model server): a 400-digit number in /cluster, 100,000 [ elsewhere."""
    if path == "/cluster":
        return whole(
            "200 OK",
            json.dumps({"members": [member("n1", "http://127.0.0.1:1") | {"mem_available_mb": HUGE}]}).encode(),
        )
    return whole("200 OK", b"[" * 100_000)


def good12b(server: list[str]) -> Callable[[str], Iterator[bytes]]:
    """The good agent: no members, the one endpoint on ``server[0]`` (the rogue's), and a working proxy."""

    def answer(path: str) -> Iterator[bytes]:
        if path == "/cluster":
            return whole("200 OK", b'{"node_id": "good", "members": []}')
        if path == "/services":
            return whole("200 OK", json.dumps([endpoint(url=server[0])]).encode())
        if path == "/services/half_plus_two":
            return whole("200 OK", json.dumps(endpoint(url=server[0])).encode())
        return whole("200 OK", b'{"predictions": [2.5]}')

    return answer


def test_on_the_wire_hostile_answers_fail_over_to_the_good_agent_sync_and_async() -> None:
    server: list[str] = []
    with Loopback(rogue12b) as bad, Loopback(good12b(server)) as good:
        server.append(bad.url)
        with Client(agents=[bad.url, good.url]) as c:
            assert c.cluster()["node_id"] == "good"
            assert [e.url for e in c.endpoints()] == [bad.url]
            assert c.predict("half_plus_two", instances=[1.0]) == {"predictions": [2.5]}

        async def main() -> None:
            async with AsyncClient(agents=[bad.url, good.url]) as c:
                assert (await c.cluster())["node_id"] == "good"
                assert await c.predict("half_plus_two", instances=[1.0]) == {"predictions": [2.5]}

        asyncio.run(main())
        posts = [h.split(b" ")[1] for h in bad.heads if h.startswith(b"POST")]
        assert posts == [b"/v1/models/half_plus_two:predict"] * 2  # the rogue's server was tried, then the proxy


# -- an inference answer's bounds: an honest large one is read; past the bounds it raises, once (review 12c) --
def yolo() -> bytes:
    """YOLOv5s's output as TF-Serving answers it (review 12c's repro): predictions [1, 25200, 85] of 4-digit
    floats, 16.2 MiB and ~2.17 M values."""
    rng = random.Random(1)
    row = [round(rng.random(), 4) for _ in range(85)]
    return json.dumps({"predictions": [[row] * 25200]}).encode()


def predictions(data: Any) -> dict[str, Any]:
    return answers.inference(data, "tfserving")


def test_an_honest_yolo_sized_answer_is_read_from_the_first_server() -> None:
    body = yolo()
    assert len(body) > 16 * 2**20 and jsonbound.values_at_most(body) > 2_000_000  # past review 12b's bounds
    assert jsonbound.cost_at_most(body) < answers.ANSWER_VALUES // 3 and len(body) < answers.ANSWER_LIMIT // 3
    chosen = endpoint(url="http://s1:8501", alternatives=[endpoint(url="http://s2:8501")])

    def answer(call: Call) -> httpx.Response:
        if call.url.endswith("/cluster"):
            return ok({"members": []})
        return ok(chosen) if call.url.endswith("/services/half_plus_two") else raw(body)

    core = ClientCore(["http://a:8400"], "me", None, 60.0, None)
    calls, result = drive(core.predict("half_plus_two", [1.0], None, False), answer)
    assert not isinstance(result, Exception), result
    assert len(result["predictions"][0]) == 25200 and len(result["predictions"][0][-1]) == 85
    assert [(c.url.split("/")[2], c.limit) for c in calls if c.method == "POST"] == [("s1:8501", answers.ANSWER_LIMIT)]
    for side in (512, 1024):  # a mask as nested lists: review 12c's 1024 x 1024 was refused
        mask = raw(json.dumps({"predictions": [[[0.5] * side] * side]}).encode())
        data = answers.checked(mask, predictions, answers.ANSWER_VALUES, jsonbound.cost_at_most)
        assert len(data["predictions"][0]) == side


def test_the_weighted_count_bounds_what_an_answer_costs_parsed() -> None:
    """Counted plainly, a value costs 8 bytes parsed (``true``) to ~250 (``{"123":0}`` with its key): 1,048,576
    one-key objects were ~250 MiB where as many floats are 32. Weighted (jsonbound.cost_at_most: two more for
    each list, object and quote), no shape costs more than ~36 bytes a unit besides its text, about what a
    number costs (numbers count 1), so ``max_answer_values`` bounds memory whatever the shape."""
    n = 20_000
    items = {
        "ints": b"-6," * n, "floats": b"0.1234567," * n, "strings": b'"ab",' * n, "non-ascii": '"Ā",'.encode() * n,
        "objects": b"{}," * n, "lists": b"[]," * n, "singletons": b"[-6]," * n, "nested": b"[[]]," * n,
        "one-key objects": b"".join(b'{"%d":-6},' % i for i in range(n)),
        "six-key objects": b"".join(b'{"a":-6,"b":-6,"c":-6,"d":-6,"e":-6,"%d":-6},' % i for i in range(n // 6)),
    }  # fmt: skip
    bodies = {name: b"[" + listed + b"0]" for name, listed in items.items()}
    bodies["one object, distinct keys"] = b"{" + b",".join(b'"%x":-6' % i for i in range(n)) + b"}"
    bodies["one wide string"] = ('["😀' + "a" * 40 * n + '"]').encode()  # decoded 4 bytes a character, twice
    per_unit = {}
    for name, body in bodies.items():
        tracemalloc.start()
        try:
            parsed = json.loads(body)
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert parsed
        units = jsonbound.cost_at_most(body)
        per_unit[name] = (kept / units, (peak - len(body)) / units)  # the peak holds the body decoded
    assert all(kept <= 40 and peak <= 40 for kept, peak in per_unit.values()), per_unit
    assert per_unit["floats"][0] > 30  # a number is the unit: nothing is weighted far past what it costs
    escaped = b'["\\ud83d\\ude00' + b"a" * 40 * n + b'"]'  # an ASCII body: its long strings cost ~5 bytes a byte
    tracemalloc.start()
    try:
        assert len(json.loads(escaped)[0]) == 40 * n + 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 4 * len(escaped) < peak - len(escaped) < 5.1 * len(escaped) and jsonbound.cost_at_most(escaped) < 16
    floats = b"[" + b"0.1234567," * n + b"0]"
    assert jsonbound.cost_at_most(floats) == jsonbound.values_at_most(floats) + 2 == n + 4  # the list weighs 2


def test_the_inference_bound_is_exact_at_and_one_past() -> None:
    body = json.dumps({"predictions": [[0.25] * 64] * 64}).encode()
    units = jsonbound.cost_at_most(body)
    assert units == jsonbound.values_at_most(body) + 2 * (66 + 2) + jsonbound.DICT_EXTRA  # 66 lists, 1 object, 2 quotes
    assert answers.checked(raw(body), predictions, units, jsonbound.cost_at_most)["predictions"][0][0] == 0.25
    with pytest.raises(answers.TooLarge, match=f"more than {units - 1} JSON values") as refused:
        answers.checked(raw(body), predictions, units - 1, jsonbound.cost_at_most)
    assert refused.value.bound == units - 1 and isinstance(refused.value, answers.Malformed)
    with pytest.raises(ValueError, match="positive"):
        ClientCore(["http://a:8400"], "me", None, 60.0, None, max_answer_values=0)
    with pytest.raises(ValueError, match="positive"):
        Client(agents=["http://a:8400"], max_answer_bytes=0)


BIG = json.dumps({"predictions": [[0.25] * 64] * 64}).encode()  # 4,298 values weighted, 24,721 bytes


def agent_of(servers: list[str]) -> Callable[[str], Iterator[bytes]]:
    """An agent sending the client to ``servers[0]`` (alternative ``servers[1]``); its proxy answers BIG."""

    def answer(path: str) -> Iterator[bytes]:
        if path == "/cluster":
            return whole("200 OK", b'{"node_id": "a", "members": []}')
        if path == "/services/half_plus_two":
            chosen = endpoint(url=servers[0], alternatives=[endpoint(url=servers[1])])
            return whole("200 OK", json.dumps(chosen).encode())
        return whole("200 OK", BIG)

    return answer


def posts(*servers: Loopback) -> int:
    return sum(head.startswith(b"POST ") for server in servers for head in server.heads)


def test_an_answer_over_the_clients_bounds_raises_answer_too_large_once_sync_and_async() -> None:
    """Review 12c: a real answer over the bounds was Malformed, so ``predict`` ran the model on the alternative
    and through every agent (2 + N runs), then raised ClusterUnreachableError. Now AnswerTooLarge, at once, on
    either bound, direct or through an agent's proxy, sync and async; at the bounds the answer is read."""
    units = jsonbound.cost_at_most(BIG)
    servers: list[str] = []
    with (
        Loopback(lambda path: whole("200 OK", BIG)) as s1,
        Loopback(lambda path: whole("200 OK", BIG)) as s2,
        Loopback(agent_of(servers)) as agent,
        Loopback(agent_of(servers)) as other,
    ):
        servers += [s1.url, s2.url]
        bounds = [({"max_answer_values": units - 1}, "values", units - 1),
                  ({"max_answer_bytes": len(BIG) - 1}, "bytes", len(BIG) - 1)]  # fmt: skip
        for options, what, bound in bounds:
            for via_proxy in (False, True):
                before = posts(s1, s2, agent, other)
                client = Client(agents=[agent.url, other.url], **options)  # type: ignore[arg-type]
                with client as c, pytest.raises(AnswerTooLarge, match=f"max_answer_{what}") as refused:
                    c.predict("half_plus_two", instances=[1.0], via_proxy=via_proxy)
                assert (refused.value.what, refused.value.bound) == (what, bound)
                assert posts(s1, s2, agent, other) == before + 1, (what, via_proxy)

                async def main(
                    options: dict[str, int] = options, via_proxy: bool = via_proxy, what: str = what
                ) -> None:
                    client = AsyncClient(agents=[agent.url, other.url], **options)  # type: ignore[arg-type]
                    async with client as c:
                        with pytest.raises(AnswerTooLarge, match=f"max_answer_{what}"):
                            await c.predict("half_plus_two", instances=[1.0], via_proxy=via_proxy)

                asyncio.run(main())
                assert posts(s1, s2, agent, other) == before + 2, (what, via_proxy)
        assert posts(s2, other) == 0  # neither the alternative nor another agent ran the model
        with Client(agents=[agent.url], max_answer_values=units, max_answer_bytes=len(BIG)) as c:
            for via_proxy in (False, True):
                assert c.predict("half_plus_two", instances=[1.0], via_proxy=via_proxy)["predictions"][0][0] == 0.25


def test_the_cli_takes_the_bounds_and_exits_1_past_them(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser(["client.cli"])
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default {answers.ANSWER_LIMIT >> 20})" in shown and f"(default {answers.ANSWER_VALUES:,})" in shown
    for bad in (["--max-answer-mb", "0"], ["--max-answer-values", "-1"], ["--max-answer-mb", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["predict", "half_plus_two", "--data", "[1.0]", *bad])
    capsys.readouterr()
    servers: list[str] = []
    with Loopback(lambda path: whole("200 OK", BIG)) as s1, Loopback(agent_of(servers)) as agent:
        servers += [s1.url, s1.url]
        units = jsonbound.cost_at_most(BIG)
        for values, code in [(str(units - 1), 1), (str(units), 0)]:
            argv = ["predict", "half_plus_two", "--data", "[1.0]", "--agent", agent.url, "--max-answer-values", values]
            args = parser.parse_args(argv)
            assert args.handler(args) == code
        out, err = capsys.readouterr()
        assert "max_answer_values" in err and json.loads(out)["predictions"][0][0] == 0.25
        assert posts(s1, agent) == 2
