"""The hostile peer on loopback (no root needed): a fake peer process squats a node's mDNS name before it
starts, advertises a made-up node, lies in every answer and forges mDNS goodbyes; three real agents.

The namespaced version with real multicast is tests/cluster/test_hostile_peer.py; this one runs in the
service tier on its own 127.0.0.x addresses, so every checkout's CI exercises the attack too. Shown to
catch the old protocol: while this was written, another checkout's agent (pre-#10 code, same test token)
on the shared loopback sent this fake peer `Authorization: Bearer <token>` within seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.discovery.txt import cluster_id
from tests.service.conftest import PLAIN
from tests.waiting import wait_for

# scripts/test.sh runs it with nothing else: fixed loopback addresses (127.0.0.61-64), and a 500 ms bound
pytestmark = pytest.mark.serial

TOKEN = "hostile-loopback-token-0123456789"  # its own cluster: other tests' agents on lo stay out of it
EVIL = "127.0.0.61"
HOSTS = {"hp0": "127.0.0.62", "hp1": "127.0.0.63", "hp2": "127.0.0.64"}


def view(agent: Any) -> tuple[str | None, int | None, dict[str, str], int]:
    """(leader, term, member -> status, worst status code) as one agent answers."""
    worst = 0
    for path in ("/services", "/health"):
        worst = max(worst, agent.get(path).status_code)
    c = agent.get("/cluster").json()
    return c["leader"], c["term"], {m["node_id"]: m["status"] for m in c["members"]}, worst


def test_a_squatted_name_a_made_up_node_and_forged_goodbyes_change_nothing(agents: Any, tmp_path: Path) -> None:
    record = tmp_path / "attacker.jsonl"
    attacker = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.hostile_peer", "--ip", EVIL, "--cluster", cluster_id(TOKEN),
         "--ids", "hp9,hp2", "--record", str(record), "--goodbye", "hp0", "--goodbye-for", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(2)  # the squat is in place before hp2 starts
        nodes = {name: agents(name, "--cluster-token", TOKEN, host=ip) for name, ip in HOSTS.items()}
        want = {name: "alive" for name in HOSTS}
        wait_for(lambda: all(view(a)[2] == want for a in nodes.values()), 20)
        # every node follows one leader before the goodbyes: a fresh board follows nobody until its view has stopped
        # growing for an election timeout (docs/election.md), so "all alive" can come a moment before that
        wait_for(lambda: len(agreed := {view(a)[:2] for a in nodes.values()}) == 1 and None not in agreed.pop(), 20)
        leader, term, _, _ = view(nodes["hp0"])
        assert leader in HOSTS
        assert "cannot advertise hp2" in nodes["hp2"].log.read_text()  # the squat worked at the mDNS layer...
        # ...yet hp2 is a member everywhere, at its own address: heartbeats carry the admission
        for a in nodes.values():
            members = {m["node_id"]: m["address"] for m in a.get("/cluster").json()["members"]}
            assert members == HOSTS
        assert nodes["hp1"].get("/services/half_plus_two").status_code == 200
        attacker.send_signal(signal.SIGUSR1)  # forged goodbyes for hp0, one a second
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for a in nodes.values():
                lead, t, members, worst = view(a)
                assert (lead, t) == (leader, term) and members == want and worst < 500
            time.sleep(0.2)
        for a in nodes.values():
            r = PLAIN.post(a.url + "/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0]}, timeout=30)
            assert r.status_code == 200 and r.json() == {"predictions": [2.5, 3.0]}
            assert all(EVIL not in e["url"] and "10.213.10.1" not in e["url"] for e in a.get("/services").json())
    finally:
        attacker.kill()
        attacker.wait()
    text = record.read_text() if record.exists() else ""
    assert TOKEN not in text and "bearer" not in text.lower()
