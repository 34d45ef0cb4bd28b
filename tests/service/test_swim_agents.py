"""SWIM membership between real agent processes on loopback: seeds only (mDNS off), signed peer plane."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx

from tests.service.conftest import PLAIN, TOKEN, free_port
from tests.waiting import wait_for

ENV = {"PEERSERVE_MDNS": "false"}


def statuses(agent: Any) -> dict[str, str]:
    return {m["node_id"]: m["status"] for m in agent.get("/cluster").json()["members"]}


def proof_counts(agent: Any) -> dict[str, float]:
    """The agent's signed suspicions checked and refused, from its /metrics."""
    found = {"checked": 0.0, "refused": 0.0}
    for line in agent.get("/metrics").text.splitlines():
        if line.startswith("peerserve_membership_suspicion_proofs_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


def test_agents_that_know_one_seed_learn_the_whole_cluster(agents: Any) -> None:
    seed_port = free_port()
    seed = agents("s0", env=ENV, port=seed_port)
    seed_url = f"http://127.0.0.1:{seed_port}"
    # each newcomer knows only the seed; the seed knows nobody
    others = [agents(f"s{i}", "--seeds", seed_url, env=ENV) for i in range(1, 5)]
    everyone = [seed, *others]
    names = {a.node_id for a in everyone}
    took = wait_for(lambda: all(statuses(a) == dict.fromkeys(names, "alive") for a in everyone), 20)
    print(f"\n5 agents, one seed each: everyone sees everyone alive in {took:.2f} s")

    # resource state travels: a model started on s3 shows in s1's /services (s1 never was told of s3)
    assert others[2].get("/services/half_plus_two").status_code == 200  # provisioned on s3 on demand
    wait_for(lambda: [s["node"] for s in others[0].get("/services").json()] == ["s3"], 10)
    r = PLAIN.post(f"{others[0].url}/services/half_plus_two/v1/models/half_plus_two:predict", json={"instances": [1]})
    assert r.json() == {"predictions": [2.5]}

    killed = time.monotonic()
    others[2].stop(signal.SIGKILL)
    rest = [a for a in everyone if a is not others[2]]
    wait_for(lambda: all(a.get("/services").json() == [] for a in rest), 5)
    dead = wait_for(lambda: all(statuses(a).get("s3") == "dead" for a in rest), 5)
    print(f"kill -9: dead at every member {time.monotonic() - killed:.2f} s after ({dead:.2f} s of polling)")
    # the survivors' suspicions of s3 travelled signed (Lifeguard counts a relayed one only so), and none was refused
    proofs = [proof_counts(a) for a in rest]
    print(f"signed suspicions checked / refused per survivor: {[(p['checked'], p['refused']) for p in proofs]}")
    assert sum(p["checked"] for p in proofs) > 0 and all(p["refused"] == 0 for p in proofs), proofs

    late = agents("s9", "--seeds", seed_url, env=ENV)  # a new member: everyone learns of it through gossip
    joined = wait_for(lambda: all(statuses(a).get("s9") == "alive" for a in rest), 10)
    print(f"new member alive everywhere in {joined:.2f} s")
    wait_for(lambda: {n for n, st in statuses(late).items() if st == "alive"} == names - {"s3"} | {"s9"}, 10)


def test_a_stranger_gossiped_about_is_never_admitted(agents: Any, tmp_path: Any) -> None:
    """A member's gossip names a node that cannot authenticate: it stays a candidate, never a member."""
    from tests.peer_tools import TestPeer

    a = agents("g0", env=ENV)
    liar = TestPeer("liar", TOKEN, tmp_path / "liar")  # an admitted-able node of the cluster, lying in gossip
    body = {"kind": "gossip", "node_id": "liar", "incarnation": 0, "version": 0, "peer_url": "https://127.0.0.1:9",
            "term": 0, "leader": None,
            "updates": [["ghost", "alive", 0, "https://127.0.0.1:10", 0, ""],  # nobody answers there
                        ["g0", "dead", 0, a.peer_url, 0, "liar"]]}  # and a rumour about g0 itself  # fmt: skip
    r = liar.request("g0", a.peer_url, "POST", "/peer/swim", body)
    assert r.status_code == 200 and r.json()["node_id"] == "g0" and r.json()["kind"] == "ack"
    time.sleep(2)
    assert set(statuses(a)) == {"g0"}  # neither the ghost nor the liar (it never answered) is a member
    wrong = {**body, "node_id": "someone-else"}
    assert liar.request("g0", a.peer_url, "POST", "/peer/swim", wrong).status_code == 403  # only for itself
    assert liar.request("g0", a.peer_url, "POST", "/peer/swim", {**body, "kind": "nonsense"}).status_code == 400
    again = liar.request("g0", a.peer_url, "POST", "/peer/swim", {**body, "updates": []}).json()
    assert again["incarnation"] == 1  # g0 refuted the rumour of its death: only it can, by its incarnation


def test_a_seed_slow_to_answer_still_admits_the_newcomer(agents: Any) -> None:
    """A loaded seed answered GET /cluster after more than a second: the newcomer must wait for it, not stay
    alone (it used to give up after 1 s every 5 s, never joined, and led a cluster of one)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seed_port = free_port()
    seed = agents("w0", env=ENV, port=seed_port)

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(2.0)
            try:
                body = PLAIN.get(f"http://127.0.0.1:{seed_port}{self.path}", timeout=5).content
            except httpx.HTTPError:  # the seed has stopped (teardown)
                self.send_error(502)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        late = agents("w1", "--seeds", f"http://127.0.0.1:{slow.server_address[1]}", env=ENV)
        took = wait_for(lambda: statuses(seed).get("w1") == "alive" and statuses(late).get("w0") == "alive", 20)
        print(f"\nthrough a seed answering in 2 s: joined in {took:.2f} s")
        wait_for(lambda: late.get("/cluster").json()["leader"] == seed.get("/cluster").json()["leader"] == "w0", 10)
    finally:
        slow.shutdown()
