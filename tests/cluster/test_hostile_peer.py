"""A stranger on the LAN (no token, no disk access; mDNS and HTTP only) replays the attacks of issue #10.

Three real agents in namespaces and one fake peer process in its own namespace (tests.cluster.hostile_peer:
its own mDNS adverts and HTTP servers). Asserted, as an operator needs it: no secret received, never a member,
none of its endpoints returned or proxied to, leader unchanged, placement unaffected, nothing bricked, no 5xx.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.discovery.txt import cluster_id
from scripts.testbed import TOKEN, TestBed
from tests.cluster.test_discovery_cluster import all_alive
from tests.cluster.test_election_cluster import settled
from tests.peer_tools import TestPeer
from tests.waiting import wait_for

pytestmark = pytest.mark.cluster

REAL = ["n0", "n1", "n2"]


def start_attacker(b: TestBed, record: Path) -> subprocess.Popen[bytes]:
    """The fake peer on host 3, advertising a made-up node n9 and (before it starts) the real n2's id."""
    h = b.hosts[3]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", h.netns, sys.executable, "-m", "tests.cluster.hostile_peer", "--ip", h.ip,
         "--cluster", cluster_id(TOKEN), "--ids", "n9,n2", "--record", str(record), "--goodbye", "n0"],
        stdout=open(b.workdir / "attacker.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    b.extra_pids.append(proc.pid)
    return proc


def observe(b: TestBed, attacker_ip: str) -> dict[str, Any]:
    """One sample of what every real agent says: members, leader, term, endpoints, worst status."""
    out: dict[str, Any] = {"members": set(), "pairs": set(), "urls": set(), "worst": 0}
    for i in range(3):
        for path in ("/cluster", "/services", "/health"):
            r = b.get(b.hosts[i].url + path)
            out["worst"] = max(out["worst"], r.status_code)
            if path == "/cluster":
                c = r.json()
                out["members"] |= {(m["node_id"], m["address"], m["status"]) for m in c["members"]}
                out["pairs"].add((c["leader"], c["term"]))
                placed = (c.get("last_placement") or {}).get("nodes") or []
                out["members"] |= {(n, "placed", "placed") for n in placed}
            if path == "/services":
                out["urls"] |= {e["url"] for e in r.json()}
    assert not any(attacker_ip in u or "10.213.10.1:" in u for u in out["urls"]), out["urls"]
    return out


def test_a_stranger_cannot_join_steal_mislead_or_topple_the_cluster(bed: Callable[[int], TestBed]) -> None:
    b = bed(4)
    record = b.workdir / "attacker-requests.jsonl"
    attacker = start_attacker(b, record)
    evil = b.hosts[3].ip
    time.sleep(2)  # its adverts are out before n2 exists
    for i in range(3):
        b.start(i)
    for i in range(3):
        b.wait_healthy(i)
    wait_for(lambda: all_alive(b, [0, 1, 2]), 20)
    leader, term = settled(b, [0, 1, 2], 10)
    for i in range(3):  # n2 is the real n2 everywhere: its id was claimed by its key, not by the first advert
        members = {m["node_id"]: m["address"] for m in b.json(i, "/cluster")["members"]}
        assert members == {h.node_id: h.ip for h in b.hosts[:3]}, members
    assert b.get(b.hosts[1].url + "/services/half_plus_two").status_code == 200  # a real model placed

    # the old attacks on the client port: peer-plane routes are not there any more
    attempts = [("PUT", "/control/desired", {"term": 2_000_000, "leader": "n9", "instances": {"half_plus_two": 2**62}}),
                ("POST", "/election/message", {"from": "n9", "message": {"type": "announce", "term": 2_000_000,
                                                                         "leader": "n9", "priority": [9, 1, "n9"]}}),
                ("POST", "/peer/leave", {"node_id": leader})]  # fmt: skip
    for method, path, body in attempts:
        for i in range(3):
            r = b.request(method, b.hosts[i].url + path, via=3, json=body, headers={"Authorization": "Bearer guess"})
            assert 400 <= r.status_code < 500, (path, r.status_code)

    # the peer port: no certificate, or one of another cluster, gets no TLS session at all
    bare = TestPeer("n9", "not-the-token-0123456789", b.workdir / "bare", with_certificate=False)
    other = TestPeer("n9", "not-the-token-0123456789", b.workdir / "other")
    for peer in (bare, other):
        for method, path, body in attempts:
            with pytest.raises(httpx.TransportError):
                b.peer_request(peer, 0, method, path, via=3, body=body)

    # forged mDNS goodbyes for n0, one a second, while we watch every agent
    attacker.send_signal(signal.SIGUSR1)
    samples = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        samples.append(observe(b, evil))
        time.sleep(0.2)
    for s in samples:
        assert s["worst"] < 500
        assert s["pairs"] == {(leader, term)}, s["pairs"]  # leader unchanged, one leader
        assert {m for m, _, _ in s["members"]} <= set(REAL), s["members"]  # never a member, never placed
        assert all(st in ("alive", "placed") for _, _, st in s["members"]), s["members"]  # no one marked dead

    # nothing bricked: inference through every agent lands on a real server and is right
    for i in range(3):
        r = b.request("POST", b.hosts[i].url + "/services/half_plus_two/v1/models/half_plus_two:predict",
                      json={"instances": [1.0, 2.0]})  # fmt: skip
        assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
        assert all(e["url"].split("//")[1].split(":")[0] in [h.ip for h in b.hosts[:3]]
                   for e in b.json(i, "/services"))  # fmt: skip

    # no secret received: what reached the fake peer never carries the token (nor a Bearer header)
    attacker.kill()
    attacker.wait()
    received = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    text = json.dumps(received)
    assert TOKEN not in text and "bearer" not in text.lower()
    assert all(e["port"] != 8401 or e["method"] for e in received)  # TLS to a plain server: nothing decoded
    for i in range(3):
        log = (b.workdir / f"n{i}.log").read_text()
        assert "n9" not in {m["node_id"] for m in b.json(i, "/cluster")["members"]}
        assert "did not authenticate" in log or i > 0
    with contextlib.suppress(Exception):
        bare.close()
        other.close()
