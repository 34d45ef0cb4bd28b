"""Where a proxied request's time went: the model server and the agent each add W3C Server-Timing entries
to the answer (the load bench's per-stage breakdown reads them)."""

from __future__ import annotations

from typing import Any

import httpx

from bench.load_gen import parse_server_timing
from tests.service.conftest import PLAIN
from tests.service.test_live_queue import MODEL, plan_two_local_instances


def test_a_proxied_answer_says_how_long_each_hop_took(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    plan_two_local_instances(a)
    with httpx.Client(base_url=a.url, timeout=10) as http:
        for _ in range(5):
            r = http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0]})
            assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
            t = parse_server_timing(r.headers["server-timing"])
            assert set(t) == {"server", "exec", "server-gc", "agent", "upstream", "agent-gc"}, r.headers[
                "server-timing"
            ]
            # nested: the agent's handler holds the exchange, which holds the server's handling and the model
            assert t["agent"] >= t["upstream"] >= t["server"] >= t["exec"] > 0, t
            assert 0 <= t["server-gc"] <= t["server"] and 0 <= t["agent-gc"] <= t["agent"], t
        direct = http.get(f"/services/{MODEL}", headers={"X-Peerserve-Client": "c1"}).json()["url"]
        bad = PLAIN.post(f"{direct}/v2/models/{MODEL}/infer", content=b"{}", timeout=10)
    assert bad.status_code == 404  # an error answer is timed too, with no model call in it
    assert set(parse_server_timing(bad.headers["server-timing"])) == {"server", "server-gc"}


def test_server_timing_off_leaves_no_timing_on_proxied_or_direct_answers(agents: Any) -> None:
    a = agents("a", "--no-discovery", "--no-server-timing")
    plan_two_local_instances(a)
    with httpx.Client(base_url=a.url, timeout=10) as http:
        r = http.post(f"/v1/models/{MODEL}:predict", json={"instances": [1.0, 2.0]})
        assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
        assert "server-timing" not in r.headers, r.headers
        direct = http.get(f"/services/{MODEL}", headers={"X-Peerserve-Client": "c1"}).json()["url"]
        ok = PLAIN.post(f"{direct}/v1/models/{MODEL}:predict", json={"instances": [1.0]}, timeout=10)
    assert ok.status_code == 200 and "server-timing" not in ok.headers, ok.headers  # the stand-in server's too
    page = PLAIN.get(f"{direct}/monitoring/prometheus/metrics", timeout=10)  # nor its monitoring page
    assert page.status_code == 404 and "request_latency" not in page.text
