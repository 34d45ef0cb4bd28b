"""/metrics, /sd/prometheus and the log lines of a real agent over loopback HTTP."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.peer_tools import TestPeer
from tests.service.conftest import PLAIN, TOKEN

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
PREDICT = "/services/half_plus_two/v1/models/half_plus_two:predict"
CATALOGUE = {"half_plus_two", "half_plus_three", "xor_mlp"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition with prometheus-client's own parser: (name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def test_metrics_count_requests_by_model_protocol_and_outcome_with_bounded_labels(agents: Any, tmp_path: Path) -> None:
    a = agents("a", "--no-discovery")  # alone: no agent of another test joins over loopback mDNS
    for _ in range(3):
        assert PLAIN.post(a.url + PREDICT, json={"instances": [1.0]}, timeout=30).status_code == 200
    assert a.get("/services/xor_mlp", headers={"X-Peerserve-Client": "phone-of-alice"}).status_code == 200
    for i in range(40):  # 40 unknown names from 40 clients: one label value, no client anywhere
        assert a.get(f"/services/nope{i}", headers={"X-Peerserve-Client": f"client-{i}"}).status_code == 404
    r = a.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "alice" not in r.text and "client-" not in r.text and "nope" not in r.text
    m = samples(r.text)
    ok = {"model": "half_plus_two", "protocol": "tfserving"}
    assert value(m, "peerserve_inference_requests_total", **ok, outcome="ok") == 3
    assert value(m, "peerserve_inference_request_duration_seconds_count", **ok) == 3
    assert value(m, "peerserve_inference_request_duration_seconds_bucket", **ok, le="+Inf") == 3
    assert value(m, "peerserve_upstream_request_duration_seconds_count", model="half_plus_two") == 3
    assert value(m, "peerserve_endpoint_queries_total", model="xor_mlp", outcome="ok") == 1
    assert value(m, "peerserve_endpoint_queries_total", model="other", outcome="client_error") == 40
    assert value(m, "peerserve_provisioning_duration_seconds_count", model="xor_mlp") == 1
    assert value(m, "peerserve_instances", model="half_plus_two", state="ready") == 1
    assert value(m, "peerserve_members", status="alive") == 1
    assert value(m, "peerserve_node_memory_available_bytes") > 0
    assert value(m, "peerserve_runtime_up") == 1
    assert value(m, "peerserve_request_log_dropped_total") == 0  # the log kept every record
    assert a.get("/health").json()["request_log"] == {"dropped": 0, "write_failures": 0, "last_write_error": None}
    assert value(m, "peerserve_request_log_write_failures_total") == 0
    models = {dict(labels).get("model") for (_name, labels) in m} - {None}
    assert models <= CATALOGUE | {"other", "_all"}, models
    # the buckets resolve 1 ms on loopback and 100+ ms on Wi-Fi
    les = {dict(k[1])["le"] for k in m if k[0] == "peerserve_inference_request_duration_seconds_bucket"}
    assert {"0.001", "0.0025", "0.1", "0.25"} <= les
    check_dashboard(r.text, tmp_path)


def check_dashboard(exposition: str, tmp: Path) -> None:
    """docs/grafana-dashboard.json queries only families the agent declares, in PromQL promtool accepts."""
    declared = set(re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M))
    names = {n for n, _ in declared}
    names |= {f"{n}_{suffix}" for n, kind in declared for suffix in ("total", "bucket", "sum", "count")
              if kind in ("counter", "histogram")}  # fmt: skip
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"\bpeerserve_[a-z_]+", e)}
    assert used and used <= names, used - names
    promtool = shutil.which("promtool")
    if promtool is not None:  # each query as a recording rule: promtool parses the PromQL
        rules = tmp / "dashboard-rules.yml"
        lines = ["groups:", "  - name: dashboard", "    rules:"]
        for i, e in enumerate(exprs):
            lines += [f"      - record: dashboard:q{i}", f"        expr: {json.dumps(e.replace('$job', 'peerserve'))}"]
        rules.write_text("\n".join(lines) + "\n")
        out = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr


def test_metrics_off_token_and_service_discovery(agents: Any) -> None:
    off = agents("off", "--no-metrics", "--no-discovery")
    assert off.get("/metrics").status_code == 404
    assert PLAIN.post(off.url + PREDICT, json={"instances": [2.0]}, timeout=30).json() == {"predictions": [3.0]}
    secret = "metrics-token-abcdef-0123"
    guarded = agents("guarded", "--metrics-token", secret, "--no-discovery")
    for path in ("/metrics", "/sd/prometheus"):
        assert guarded.get(path).status_code == 401
        assert guarded.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert guarded.get(path, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
        assert guarded.get(path, headers={"Authorization": secret}).status_code == 200  # Prometheus 2.42's SD
        assert guarded.get(path, headers={"Authorization": f"Basic {secret}"}).status_code == 401
    # SD works with metrics off (it lists members, not series); peers are listed in the cluster tier's test
    assert off.get("/sd/prometheus").json() == [
        {"targets": [f"127.0.0.1:{off.port}"], "labels": {"node": "off", "__meta_peerserve_status": "alive",
                                                        "__scheme__": "http"}}
    ]  # fmt: skip


def test_json_logs_name_node_term_and_model_and_never_the_token(agents: Any) -> None:
    a = agents("a", "--log-format", "json", "--log-level", "debug", "--no-discovery")
    assert PLAIN.post(a.url + PREDICT, json={"instances": [1.0]}, timeout=30).status_code == 200
    assert a.put_desired(3, {"half_plus_two": 1, "xor_mlp": 1}).status_code == 200
    stranger = TestPeer("lead", TOKEN + "x", a.data_dir.parent / "stranger")  # another token: another CA
    with pytest.raises(httpx.ConnectError):
        stranger.put_desired(a.node_id, a.peer_url, 4, {"xor_mlp": 1})
    # the token where an access log or an error message would echo it
    a.get(f"/services/{TOKEN}")
    a.get("/services/xor_mlp", headers={"X-Peerserve-Client": TOKEN})
    a.get(f"/stats/requests?since={TOKEN}")
    a.wait_ready("xor_mlp")
    a.stop(signal.SIGTERM)
    text = a.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # every line is one JSON object, but for Python's resource_tracker process warning at exit (not ours)
    others = [line for line in text.splitlines() if not line.startswith("{")]
    assert len(lines) >= 10 and all("resource_tracker" in line for line in others), others
    assert all(x["node"] == "a" and {"ts", "level", "logger", "term", "model", "msg"} <= x.keys() for x in lines)
    assert {x["term"] for x in lines} >= {0, 3}
    assert any(x["model"] == "xor_mlp" and "started" in x["msg"] for x in lines)
    assert any("desired set from lead at term 3" in x["msg"] for x in lines)
    assert any("[redacted]" in x["msg"] for x in lines)  # the access log saw the token and hid it
    assert [line for line in text.splitlines() if TOKEN in line] == []


def test_sd_and_membership_series_follow_the_peer_table_in_process(tmp_path: Path) -> None:
    """An agent's own peer table (alive, suspect, dead) -> SD target groups and peerserve_members."""
    from agent.node import NodeAgent
    from agent.observe import sd_targets
    from agent.peers import Member
    from agent.settings import Settings

    peers = [
        Member("p1", "10.0.0.1", "http://10.0.0.1:8400", "alive"),
        Member("p2", "10.0.0.2", "http://10.0.0.2:8400", "suspect"),
        Member("p3", "10.0.0.3", "http://[fd00::3]:8400", "dead"),
    ]

    class Table:
        def members(self) -> list[Member]:
            return peers

    node = NodeAgent(Settings(node_id="me", port=8411, data_dir=str(tmp_path), discovery=False), peers=Table())
    try:
        groups = {g["labels"]["node"]: (g["targets"], g["labels"]["__meta_peerserve_status"]) for g in sd_targets(node)}
        assert groups == {
            "me": (["127.0.0.1:8411"], "alive"),
            "p1": (["10.0.0.1:8400"], "alive"),
            "p2": (["10.0.0.2:8400"], "suspect"),
            "p3": (["[fd00::3]:8400"], "dead"),
        }
        m = samples(node.telemetry.exposition().decode())
        counts = {s: value(m, "peerserve_members", status=s) for s in ("alive", "suspect", "dead")}
        assert counts == {"alive": 2, "suspect": 1, "dead": 1}
        peers.pop()  # forgotten: gone from SD and from the counts
        assert "p3" not in {g["labels"]["node"] for g in sd_targets(node)}
        assert value(samples(node.telemetry.exposition().decode()), "peerserve_members", status="dead") == 0
    finally:
        node.store.close()
