"""Live queue lengths over real HTTP: the proxy counts its open requests per model server, and the
endpoint answer draws away from a server that has more in flight than the plan expects (issue 16).

A request counts only while its server holds it (last byte sent -> response head, review14a F2): a stalled
upload, which held a count here before, no longer does. The draw away from a server holding a request is
tested in tests/service/test_proxy_deadlines.py (a scripted server holds it; the stand-in answers at once)."""

from __future__ import annotations

from typing import Any

import httpx

from tests.peer_tools import TestPeer
from tests.service.conftest import TOKEN

MODEL = "half_plus_two"


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


def first_choices(a: Any, n: int) -> list[dict[str, Any]]:
    with httpx.Client(base_url=a.url, timeout=10) as http:
        return [http.get(f"/services/{MODEL}", headers={"X-Peerserve-Client": "c1"}).json() for _ in range(n)]


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
