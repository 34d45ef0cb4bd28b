"""Requests sent straight to a node's model server (the endpoint answer; no agent proxies them, nobody logs their
latency) show up in that node's own service figure and in the leader's snapshot (agent/serving/server_scrape.py,
agent/placement.py): a real agent, its process runtime's stand-in, loopback only."""

from __future__ import annotations

import time
from typing import Any

import httpx

from agent.catalogue import builtin_catalogue_text, parse_catalogue
from agent.placement import MIN_LATENCY_SAMPLES, RequestRecord, build_snapshot, parse_node_report, parse_request
from peerserve import wire
from tests.waiting import wait_for

M = "half_plus_two"


def test_requests_sent_straight_to_a_model_server_show_in_its_nodes_figure_and_the_snapshot(agents: Any) -> None:
    a = agents("a", "--server-stats-s", "0.2", env={"PEERSERVE_MDNS": "false", "PEERSERVE_DISCOVERY": "false"})
    assert a.put_desired(1, {M: 1}).status_code == 200
    [inst] = a.wait_ready(M)
    sent = 40
    with httpx.Client(timeout=30) as direct:  # the model server's own URL: no agent in the path
        for i in range(sent):
            r = direct.post(f"{inst['url']}/v1/models/{M}:predict", json={"instances": [float(i), 1.0, 2.0]})
            assert r.status_code == 200 and r.json()["predictions"][0] == i / 2 + 2
    wait_for(lambda: a.get("/stats/node").json()["service"].get(M, {}).get("requests", 0) >= sent, 15)
    service = a.get("/stats/node").json()["service"][M]
    # every predict served counts, whoever sent it: the agent's one warm-up predict too where it came after the
    # first scrape (readiness probes and the metrics page itself are no inference calls)
    assert sent <= service["requests"] <= sent + 1
    assert 0 < service["service_ms"] < 1000
    assert a.get("/health").json()["server_stats"] == {"errors": 0, "last_error": None}
    log = a.get("/stats/requests?since=0").json()["requests"]
    assert not [x for x in log if x["model"] == M and x["latency_ms"] is not None]  # nobody timed them

    # The leader's snapshot: the report as the peer plane carries it (validated and re-encoded), one stream of
    # the model (a client whose requests another agent's endpoint answer sent here): b's figure is its own.
    stats = wire.NodeStats.parse(a.get("/stats/node").json()).to_json()
    node = parse_node_report(stats, a.get("/stats/models").json())
    now = time.time()
    stream = [RequestRecord(now - 1, M, "phone@10.0.0.9", {node.node_id: 1.0}, None, None, 200, "other")]
    rows = [parse_request(x) for x in log] + stream * MIN_LATENCY_SAMPLES
    catalogue = parse_catalogue(builtin_catalogue_text(), "built-in")
    for objective in ("queue-p99", "thesis"):
        snapshot = build_snapshot([node], rows, catalogue, now, objective=objective, window_s=600.0)
        [request] = [r for r in snapshot["requests"] if r["model"] == M]
        assert request["exec_ms"][node.node_id] == service["service_ms"]
    no_word = parse_node_report({**stats, "service": {}}, {})
    before = build_snapshot([no_word], rows, catalogue, now, objective="queue-p99", window_s=600.0)
    [request] = [r for r in before["requests"] if r["model"] == M]
    assert request["exec_ms"][node.node_id] == catalogue.models[M].expected_exec_ms(node.node_class)
