"""Discovery between real agent processes on their own loopback addresses (real mDNS bound to lo)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agent.discovery.txt import cluster_id
from tests.service.conftest import PLAIN, TOKEN, free_port
from tests.waiting import wait_for

# scripts/test.sh runs it with nothing else: fixed loopback addresses (127.0.0.2-9), and a death seen within 3 s
pytestmark = pytest.mark.serial


def statuses(agent: Any) -> dict[str, str]:
    return {m["node_id"]: m["status"] for m in agent.get("/cluster").json()["members"]}


def test_agents_discover_each_other_and_answer_for_the_cluster(agents: Any) -> None:
    a = agents("a", host="127.0.0.2")
    b = agents("b", host="127.0.0.3")
    c = agents("c", host="127.0.0.4")
    # mDNS on one shared loopback: seconds when quiet; a loaded machine (other agents on 127.0.0.x) took ~14 s
    took = wait_for(lambda: all(statuses(x) == {"a": "alive", "b": "alive", "c": "alive"} for x in (a, b, c)), 30)
    print(f"\n3 agents discovered each other in {took:.2f} s")
    assert b.get("/services/half_plus_two").status_code == 200  # provisioned on b
    # a learns b's server from b's own state; the leader's first round may already have placed the stream
    # elsewhere too (1 in 8 runs), so b's server must be among a's answers, not the only one
    wait_for(lambda: "b" in [s["node"] for s in a.get("/services").json()], 10)
    r = PLAIN.post(a.url + "/services/half_plus_two/v1/models/half_plus_two:predict", json={"instances": [1, 2, 5]})
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}  # a proxies to a server of the cluster

    killed = time.monotonic()
    b.stop(signal.SIGKILL)
    gone = wait_for(lambda: statuses(a).get("b") != "alive" and statuses(c).get("b") != "alive", 3)
    # b is out of every answer; the leader re-places its stream at once, so a or c may already serve it
    assert all(s["node"] != "b" for x in (a, c) for s in x.get("/services").json())
    dead = wait_for(lambda: statuses(a).get("b") == "dead" and statuses(c).get("b") == "dead", 3)
    print(f"kill -9: out of /services in {gone:.2f} s, dead everywhere {time.monotonic() - killed:.2f} s after")
    assert dead < 3

    c.stop(signal.SIGTERM)
    left = wait_for(lambda: statuses(a).get("c") == "dead", 1.0, step=0.01)
    print(f"graceful stop: gone in {left:.2f} s")

    b.start()  # a node that comes back is alive again
    wait_for(lambda: statuses(a).get("b") == "alive", 10)


class _Garbage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"node_id": 42, "endpoints": "everything"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return


def test_misbehaving_peers_are_ignored(agents: Any) -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    port = free_port("127.0.0.5")
    server = ThreadingHTTPServer(("127.0.0.5", port), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    a = agents("a", "--seeds", f"http://127.0.0.5:{port}", host="127.0.0.6")

    async def advertise_bad() -> None:
        zc = AsyncZeroconf(interfaces=["127.0.0.5"], ip_version=IPVersion.V4Only)
        bad = [
            {"id": "evil", "port": str(port), "pv": "99"},  # unknown protocol version
            {"id": "x" * 70, "port": str(port), "pv": "1"},  # not a DNS label
            {"id": "garbage", "port": str(port), "pv": "1", "c": cluster_id(TOKEN)},  # answers with garbage
        ]
        infos = [
            AsyncServiceInfo("_peerserve._tcp.local.", f"bad{i}._peerserve._tcp.local.", port=port,
                             addresses=[socket.inet_aton("127.0.0.5")], properties=p, server=f"bad{i}.local.")
            for i, p in enumerate(bad)
        ]  # fmt: skip
        for info in infos:
            await zc.async_register_service(info)
        await asyncio.sleep(4)
        for info in infos:
            await zc.async_unregister_service(info)
        await zc.async_close()

    asyncio.run(advertise_bad())
    server.shutdown()
    assert a.get("/health").status_code == 200
    assert [m["node_id"] for m in a.get("/cluster").json()["members"]] == ["a"]  # never admitted
    log = a.log.read_text()
    assert log.count("unknown protocol version") == 1
    assert log.count("candidate garbage at https://127.0.0.5") == 1  # logged once, not a member
    assert "invalid node id" in log


def test_agents_of_another_cluster_are_ignored(agents: Any) -> None:
    a = agents("a", host="127.0.0.8")
    other = agents("z", "--cluster-token", "another-cluster-token-000", host="127.0.0.9")
    time.sleep(3)
    assert [m["node_id"] for m in a.get("/cluster").json()["members"]] == ["a"]
    assert [m["node_id"] for m in other.get("/cluster").json()["members"]] == ["z"]
    assert "another cluster" in a.log.read_text()


@pytest.mark.parametrize("flag", ["--no-discovery"])
def test_discovery_can_be_switched_off(agents: Any, flag: str) -> None:
    a = agents("a", flag, host="127.0.0.7")
    assert [m["node_id"] for m in a.get("/cluster").json()["members"]] == ["a"]
