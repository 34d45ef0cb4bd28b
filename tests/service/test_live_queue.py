"""Live queue lengths over real HTTP: the proxy counts its open requests per model server, and the
endpoint answer draws away from a server that has more in flight than the plan expects (issue 16)."""

from __future__ import annotations

import socket
from typing import Any

import httpx

from tests.peer_tools import TestPeer
from tests.service.conftest import TOKEN
from tests.waiting import wait_for

MODEL = "half_plus_two"
SAMPLES = 400


def plan_two_local_instances(a: Any) -> None:
    """The leader's command: two instances here, this node's whole share for the site, no queue planned."""
    lead = TestPeer("lead", TOKEN, a.data_dir.parent / "lead-identity")
    placement = {
        "spread": [{"model": MODEL, "rtt_ms": {a.node_id: 1.0}, "shares": {a.node_id: 1.0}}],
        "planned_queue": {a.node_id: {MODEL: 0.0}},
    }
    body = {"term": 1, "leader": "lead", "instances": {MODEL: 2}, "placement": placement}
    r = lead.request(a.node_id, a.peer_url, "PUT", "/control/desired", body)
    assert r.status_code == 200, r.text
    a.wait_ready(MODEL, 2)


def hold_one_predict(a: Any) -> socket.socket:
    """A predict whose large body never finishes: the proxy streams it to one server and has it open there
    until the socket closes (a body within the first 64 KiB is read whole before any server is contacted)."""
    sock = socket.create_connection((a.host, a.port), timeout=5)
    head = (
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: {a.host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 200000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"instances": [' + b"1.0, " * 14000)
    return sock


def first_choices(a: Any, n: int) -> list[dict[str, Any]]:
    with httpx.Client(base_url=a.url, timeout=10) as http:
        return [http.get(f"/services/{MODEL}", headers={"X-Peerserve-Client": "c1"}).json() for _ in range(n)]


def test_the_endpoint_choice_draws_away_from_a_server_with_requests_in_flight(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    plan_two_local_instances(a)
    urls = sorted({c["url"] for c in first_choices(a, 40)})
    assert len(urls) == 2, "the plan's share is split over both local servers"
    held = hold_one_predict(a)
    try:
        wait_for(
            lambda: sum(c["in_flight"] for c in [first_choices(a, 1)[0], *first_choices(a, 1)[0]["alternatives"]]) == 1,
            5,
        )
        picks = first_choices(a, SAMPLES)
        busy = next(c["url"] for c in [picks[0], *picks[0]["alternatives"]] if c["in_flight"] == 1)
        share = sum(c["url"] == busy for c in picks) / SAMPLES
        # p2c: scores 2 and 1, draw weights 0.5 / 2 ** 2 and 0.5 / 1: the busy server only when both draws
        # fall on it, 0.2 ** 2 = 4% of the time (sd 0.01); the weighted rule: a third
        assert 0.005 < share < 0.1, share
    finally:
        held.close()
    wait_for(
        lambda: all(c["in_flight"] == 0 for c in [first_choices(a, 1)[0], *first_choices(a, 1)[0]["alternatives"]]), 5
    )
    picks = first_choices(a, SAMPLES)
    share = sum(c["url"] == busy for c in picks) / SAMPLES
    assert 0.38 < share < 0.62, share  # nothing in flight: the plan's even split again


def test_answered_and_failed_requests_leave_nothing_counted(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    plan_two_local_instances(a)
    with httpx.Client(base_url=a.url, timeout=10) as http:
        for _ in range(20):
            r = http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0]})
            assert r.json() == {"predictions": [2.5, 3.0]}
            assert r.headers["x-peerserve-node"] == "a"  # the node that served it
        # the model server's 400 for a body that is not JSON
        bad = http.post(
            f"/v1/models/{MODEL}:predict", content=b"not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
    choice = first_choices(a, 1)[0]
    assert [c["in_flight"] for c in [choice, *choice["alternatives"]]] == [0, 0]
