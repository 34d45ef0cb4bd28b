"""The agent over real loopback HTTP: client API, proxy, stats, control, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.placement import parse_node_report
from peerserve import wire
from tests.peer_tools import TestPeer
from tests.service.conftest import PLAIN, STATS_READER, TOKEN

PREDICT = "/services/half_plus_two/v1/models/half_plus_two:predict"


def test_predict_through_the_proxy_provisions_on_demand(agents: Any) -> None:
    a = agents("a")
    r = PLAIN.post(a.url + PREDICT, json={"instances": [1.0, 2.0, 5.0]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    columnar = PLAIN.post(a.url + PREDICT, json={"inputs": [1.0, 2.0]}, timeout=30)
    assert columnar.json() == {"outputs": [2.5, 3.0]}
    services = a.get("/services").json()
    assert [(s["model"], s["node"]) for s in services] == [("half_plus_two", a.get("/health").json()["node_id"])]
    assert services[0]["url"].startswith("http://127.0.0.1:")
    direct = PLAIN.post(services[0]["url"] + "/v1/models/half_plus_two:predict", json={"instances": [4]})
    assert direct.json() == {"predictions": [4.0]}
    log = a.get("/stats/requests?since=0").json()["requests"]
    proxied = [r for r in log if r["latency_ms"] is not None]
    assert len(proxied) == 2 and all(r["status"] == 200 and r["model"] == "half_plus_two" for r in proxied)


def test_endpoint_query_explains_its_choice_and_uses_reported_rtt(agents: Any) -> None:
    a = agents("a")
    node = a.get("/health").json()["node_id"]
    r = a.get("/services/xor_mlp", headers={"X-Peerserve-RTT": f"{node}=3.5", "X-Peerserve-Client": "phone-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "xor_mlp" and body["node"] == node
    assert body["why"]["rtt_ms"] == 3.5 and body["why"]["rtt_source"] == "client"
    assert body["why"]["estimated_ms"] == 3.5 + body["why"]["exec_ms"]
    xor = PLAIN.post(body["url"] + "/v1/models/xor_mlp:predict", json={"instances": [[0, 0], [0, 1], [1, 0], [1, 1]]})
    assert [round(p[0]) for p in xor.json()["predictions"]] == [0, 1, 1, 0]
    # The client's RTT is remembered for its later queries.
    again = a.get("/services/xor_mlp", headers={"X-Peerserve-Client": "phone-7"}).json()
    assert again["why"]["rtt_source"] == "client"
    log = a.get("/stats/requests?since=0").json()["requests"]
    assert log[0]["client"] == "phone-7@127.0.0.1" and log[0]["rtt_ms"] == {node: 3.5}


def test_unknown_and_invalid_models(agents: Any) -> None:
    a = agents("a")
    started = time.monotonic()
    r = a.get("/services/resnet9000")
    assert r.status_code == 404 and "not in the catalogue" in r.json()["error"]
    assert time.monotonic() - started < 2
    assert PLAIN.post(a.url + "/services/resnet9000/v1/models/resnet9000:predict", json={}).status_code == 404
    # TF-Serving's own error for each request (review26a L3: every one was "Latest(resnet9000)")
    for method, path, status, error in (
        (
            "POST",
            "/v1/models/resnet9000/versions/3:predict",
            404,
            "Servable not found for request: Specific(resnet9000, 3)",
        ),
        ("GET", "/v1/models/resnet9000/metadata", 404, "Servable not found for request: Latest(resnet9000)"),
        ("GET", "/v1/models/resnet9000/versions/3", 404, "Could not find version 3 of model resnet9000"),
        ("POST", "/v1/models/resnet9000/labels/canary:regress", 400, "Unrecognized servable version label: canary"),
    ):
        r = PLAIN.request(method, a.url + path, json={"examples": []} if method == "POST" else None, timeout=30)
        assert (r.status_code, r.json()) == (status, {"error": error}), path
    for path in ("/services/bad%20name", "/services/..%2e"):
        r = a.get(path)
        assert r.status_code in (400, 404) and "error" in r.json()


def test_proxy_only_forwards_tf_serving_paths(agents: Any) -> None:
    a = agents("a")
    for path in (
        "/services/half_plus_two/v1/models/xor_mlp:predict",
        "/services/half_plus_two/admin",
        "/services/half_plus_two/v1/models/half_plus_two%2F..%2F..%2Fx:predict",
    ):
        r = PLAIN.post(a.url + path, json={"instances": [1]}, timeout=30)
        assert r.status_code == 400, (path, r.text)
        assert "error" in r.json()


def test_model_server_errors_pass_through_unchanged(agents: Any) -> None:
    a = agents("a")
    r = PLAIN.post(
        a.url + PREDICT,
        content=b'{"instances": [1,',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and "JSON Parse error" in r.json()["error"]
    r = PLAIN.post(a.url + PREDICT, json={"signature": 1}, timeout=30)
    assert r.status_code == 400 and r.json() == {"error": "Missing 'inputs' or 'instances' key"}
    r = PLAIN.get(a.url + "/services/half_plus_two/v1/models/half_plus_two/versions/7", timeout=30)
    assert r.json() == {"error": "Could not find version 7 of model half_plus_two"}  # a status GET: GetModelStatus
    assert r.status_code == 404
    meta = PLAIN.get(a.url + "/services/half_plus_two/v1/models/half_plus_two/metadata", timeout=30).json()
    assert meta["model_spec"]["name"] == "half_plus_two"


def test_oversized_body_is_refused(agents: Any) -> None:
    a = agents("a", "--provision-wait-s", "10")
    big = b"[" + b"1," * (5 * 2**20) + b"1]"
    r = PLAIN.post(a.url + PREDICT, content=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "error" in r.json()
    assert a.get("/health").status_code == 200


def test_malformed_rtt_report(agents: Any) -> None:
    a = agents("a")
    r = a.get("/services/half_plus_two", headers={"X-Peerserve-RTT": "n1=fast"})
    assert r.status_code == 400 and "RTT" in r.json()["error"]


def _catalogue(tmp_path: Path, extra: str) -> str:
    from agent.catalogue import builtin_catalogue_text

    f = tmp_path / "catalogue.toml"
    f.write_text(builtin_catalogue_text() + extra)
    return str(f)


HUGE = """
[[models]]
name = "huge"
image = "peerserve/modelserver:latest"
stand_in = "half_plus_two"
mem_mb = 10000000  # 10 TB: more than any node, within the catalogue's bound (16 TiB)
compute = 1
"""

BROKEN = """
[[models]]
name = "broken"
image = "peerserve/modelserver:latest"
stand_in = "no_such_model"
mem_mb = 1
compute = 1
"""


def test_model_that_fits_nowhere_gets_507(agents: Any, tmp_path: Path) -> None:
    a = agents("a", "--catalogue", _catalogue(tmp_path, HUGE))
    r = a.get("/services/huge")
    assert r.status_code == 507
    assert "10000000 MB" in r.json()["error"] and "most free" in r.json()["error"]


def test_failing_start_is_retried_with_backoff_and_answers_503(agents: Any, tmp_path: Path) -> None:
    a = agents("a", "--catalogue", _catalogue(tmp_path, BROKEN), "--provision-wait-s", "1.5")
    r = a.get("/services/broken")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    health = a.get("/health").json()
    assert health["status"] == "degraded"
    failing = health["failing_models"]["broken"]
    assert failing["failures"] >= 1 and "no stand-in model" in failing["error"]
    time.sleep(5.5)  # retries at +1 s and +3 s, seen by reconcile rounds every 2 s
    later = a.get("/health").json()["failing_models"]["broken"]
    assert later["failures"] > failing["failures"] and later["retry_at"] > failing["retry_at"]


def test_control_api_auth_fencing_and_idempotence(agents: Any, tmp_path: Any) -> None:
    a = agents("a", "--no-discovery")
    body = {"term": 2, "leader": "lead", "instances": {"half_plus_two": 1}}
    assert PLAIN.put(a.url + "/control/desired", json=body).status_code in (404, 405)  # not on the client API
    stranger = TestPeer("lead", "another-cluster-token-0000", tmp_path / "stranger")
    with pytest.raises(httpx.ConnectError):  # its certificate is not of this cluster: no TLS session
        stranger.put_desired("a", a.peer_url, 2, {"half_plus_two": 1})
    lead = TestPeer("lead", TOKEN, tmp_path / "lead-identity")  # the key conftest's put_desired uses
    assert lead.request("a", a.peer_url, "PUT", "/control/desired", body, signed=False).status_code == 401
    r = lead.request("a", a.peer_url, "PUT", "/control/desired", raw=b"{nope")
    assert r.status_code == 400 and "error" in r.json()
    assert lead.put_desired("a", a.peer_url, -1, {}).status_code == 400
    assert lead.put_desired("a", a.peer_url, 2, {"half_plus_two": 10**30}).status_code == 400
    assert lead.put_desired("a", a.peer_url, 2, {"half_plus_two": 65}).status_code == 400  # over the bound
    assert lead.put_desired("a", a.peer_url, 2, {}, leader="someone-else").status_code == 409
    impostor = TestPeer("lead", TOKEN, tmp_path / "impostor")  # has the token, but "lead" is pinned to a key
    assert impostor.put_desired("a", a.peer_url, 2, {"half_plus_two": 1}).status_code == 403
    r = a.put_desired(2, {"resnet": 1})
    assert r.status_code == 400 and "resnet" in r.json()["error"]
    r = a.put_desired(2, {"half_plus_two": -1})
    assert r.status_code == 400
    assert a.put_desired(2, {"half_plus_two": 1}).status_code == 200
    first = a.wait_ready("half_plus_two")
    again = a.put_desired(2, {"half_plus_two": 1})
    assert again.status_code == 200 and again.json()["instances"] == {"half_plus_two": 1}
    time.sleep(1)
    assert a.wait_ready("half_plus_two") == first  # same instance: nothing restarted
    stale = a.put_desired(1, {})
    assert stale.status_code == 409 and stale.json()["highest_term"] == 2
    assert a.put_desired(3, {"half_plus_two": 2}).status_code == 200
    assert len(a.wait_ready("half_plus_two", 2)) == 2
    assert a.get("/stats/node").json()["term"] == 3
    rival = a.put_desired(3, {}, leader="rival")  # a second leader of the same term (a partition's other side)
    assert rival.status_code == 409 and "already has leader lead" in rival.json()["error"]


def test_request_stats_cursor_loses_and_repeats_nothing(agents: Any) -> None:
    a = agents("a")
    for i in range(7):
        a.get("/services/half_plus_two", headers={"X-Peerserve-Client": f"c{i}"})
    seen, cursor = [], 0
    while True:
        page = a.get(f"/stats/requests?since={cursor}&limit=3").json()
        if not page["requests"]:
            break
        seen += [r["client"] for r in page["requests"]]
        cursor = page["next"]
    assert seen == [f"c{i}@127.0.0.1" for i in range(7)]
    assert a.get("/stats/requests?since=-4").status_code == 422
    models = a.get("/stats/models").json()["models"]
    assert models["half_plus_two"]["ready"] == 1 and models["half_plus_two"]["provisioned_at"] is not None


def test_cluster_and_health_shapes(agents: Any) -> None:
    a = agents("a")
    cluster = a.get("/cluster").json()
    assert set(cluster) >= {"node_id", "leader", "term", "members"}
    [me] = cluster["members"]
    assert me["status"] == "alive" and me["api_url"] == a.url
    health = a.get("/health").json()
    assert health["status"] == "ok" and health["runtime"]["kind"] == "process"
    node = a.get("/stats/node").json()
    assert node["mem_total_mb"] > 0 and 0 <= node["cpu_percent"] <= 100
    assert node["cores"] == float(os.cpu_count() or 1) and node["load_per_cpu"] >= 0  # the queue model's limit
    assert node["concurrency"] == 1.0  # instance_concurrency's default: one request at a time per instance
    # what the leader sees of it: the peer client re-encodes the answer through wire.NodeStats (peer_client.get_json)
    seen = parse_node_report(wire.NodeStats.parse(node).to_json(), {"models": {}})
    assert (seen.cores, seen.concurrency, seen.load_per_cpu) == (node["cores"], 1.0, node["load_per_cpu"])


def test_on_demand_model_survives_a_leader_command_that_predates_it(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    assert a.get("/services/xor_mlp").status_code == 200  # provisioned on demand here
    assert a.put_desired(5, {"half_plus_two": 1}).status_code == 200  # a plan made before it saw xor_mlp
    assert a.get("/stats/node").json()["desired"] == {"half_plus_two": 1, "xor_mlp": 1}
    assert a.put_desired(6, {"xor_mlp": 2}).status_code == 200  # the leader places it: its word counts
    assert a.get("/stats/node").json()["desired"] == {"xor_mlp": 2}


def test_request_log_names_clients_so_it_needs_the_reader_token(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    assert a.get("/services/xor_mlp", headers={"X-Peerserve-Client": "phone-7"}).status_code in (200, 503)
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer wrong"}):
        r = a.get("/stats/requests?since=0", headers=headers)  # no reader token, the cluster token itself, junk
        assert r.status_code == 401 and set(r.json()) == {"error"}, r.text
    out = subprocess.run(
        [sys.executable, "-m", "peerserve", "stats-token", "--cluster-token", TOKEN],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    reader = out.stdout.strip()
    assert reader and TOKEN not in reader and {"Authorization": f"Bearer {reader}"} == STATS_READER
    log = a.get("/stats/requests?since=0", headers={"Authorization": f"Bearer {reader}"}).json()["requests"]
    assert [r["client"] for r in log] == ["phone-7@127.0.0.1"]
