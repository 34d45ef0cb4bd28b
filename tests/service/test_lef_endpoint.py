"""The endpoint rule ``lef`` over real loopback HTTP (issue 16 targets 2 and 5c): an agent configured with
``endpoint_rule = "lef"`` (uvicorn with the agent's own config, in this process, mDNS off) in front of two
scripted model servers sends each predict to the server the rule names from its own requests in flight there:
the ranking's first while both are idle, the other while the first holds a request, and back to the ranking
when both hold one. No plan is needed (lef reorders without one; p2c keeps the ranking there)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import agent.decisions
from agent.decisions import rank_endpoints
from agent.node import NodeAgent
from peerserve.dispatch import Finish, least_finish, node_slots
from tests.service.scripted import MODEL
from tests.service.test_proxy_deadlines import agent_before, in_flight, ok, predict
from tests.waiting import wait_for

CLIENT = {"X-Peerserve-Client": "lef"}


def named(agent: NodeAgent, base: str) -> str:
    """The server the pure rule names now: this agent's candidates in its rank order (no RTT reported: the
    default for both; then the measured execution times, then URL), their catalogue service times, this
    node's slots, the in-flight counts the endpoint answer reports."""
    live = in_flight(base)
    ranked = rank_endpoints(agent.candidates(MODEL), {})
    eps = [(ch.candidate.node, ch.candidate.url) for ch in ranked]
    fin = [Finish(ch.rtt_ms, ch.candidate.service_ms, agent.concurrency) for ch in ranked]
    pick = least_finish(eps, fin, live)
    assert pick is not None
    return eps[pick][1]


def holding(release: threading.Event) -> Callable[[socket.socket, bytes], None]:
    def answer(conn: socket.socket, body: bytes) -> None:
        if b"hold" in body:
            release.wait(30)
        ok(conn, body)

    return answer


def test_an_agent_under_lef_sends_each_request_to_the_server_the_rule_names(tmp_path: Path) -> None:
    release = threading.Event()
    with agent_before([holding(release), holding(release)], tmp_path, timeout=30.0, endpoint_rule="lef") as (
        base,
        agent,
        ups,
    ):
        assert agent.settings.endpoint_rule == "lef" and agent.last_placement is None
        by_url = {u.url: u for u in ups}
        assert all(c.service_ms == 2.0 for c in agent.candidates(MODEL))  # half_plus_two: 500 req/s declared
        threads: list[threading.Thread] = []
        out: list[int | str] = []

        def hold() -> None:
            t = threading.Thread(target=lambda: out.append(predict(base, {"instances": [1.0], "hold": 1})[0]))
            t.start()
            threads.append(t)

        try:
            # both idle: the rule names the ranking's first, and a predict reaches it
            first = named(agent, base)
            before = {u: s.requests for u, s in by_url.items()}
            assert predict(base)[0] == 200
            assert {u: s.requests - before[u] for u, s in by_url.items()} == {u: int(u == first) for u in by_url}
            # one held there: every answer and every predict goes to the other server
            hold()
            wait_for(lambda: in_flight(base).get(first) == 1, timeout=10)
            other = named(agent, base)
            assert other != first
            before = {u: s.requests for u, s in by_url.items()}
            for _ in range(20):
                assert predict(base)[0] == 200
            assert by_url[other].requests - before[other] == 20 and by_url[first].requests == before[first]
            answer = agent_get(base)
            assert answer["url"] == other and answer["in_flight"] == 0
            # one held on each: a tie, the ranking's first (by the execution times measured meanwhile)
            hold()
            wait_for(lambda: in_flight(base) == {first: 1, other: 1}, timeout=10)
            tie = named(agent, base)
            before = {u: s.requests for u, s in by_url.items()}
            assert predict(base)[0] == 200
            assert {u: s.requests - before[u] for u, s in by_url.items()} == {u: int(u == tie) for u in by_url}
        finally:
            release.set()
            for t in threads:
                t.join(15)
        assert out == [200, 200] and sum(in_flight(base).values()) == 0


def agent_get(base: str) -> dict[str, object]:
    with httpx.Client(timeout=10) as c:
        answer: dict[str, object] = c.get(f"{base}/services/{MODEL}", headers=CLIENT).json()
    return answer


def test_the_request_path_reads_the_summarys_slots_parsed_when_it_arrived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review20c M1: the agent parses a summary's ``slots`` once, when the summary arrives; its requests under lef
    read that parse (agent.placement_slots) and parse nothing themselves, however many there are."""
    calls: list[object] = []

    def counted(placement: object) -> dict[str, float]:
        calls.append(placement)
        return node_slots(placement)  # type: ignore[arg-type]

    monkeypatch.setattr(agent.decisions, "node_slots", counted)
    with agent_before([ok, ok], tmp_path, endpoint_rule="lef") as (base, node, _):
        node.last_placement = {"slots": {f"n{i}": 4 for i in range(256)}}
        assert node.placement_slots == {f"n{i}": 4.0 for i in range(256)}
        assert [predict(base)[0] for _ in range(10)] == [200] * 10
        assert agent_get(base)["in_flight"] == 0
    assert calls == []
