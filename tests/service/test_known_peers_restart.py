"""After a power cut, agents with neither mDNS nor seeds find each other again from the peers they saved
(agent/known_peers.py) and elect a leader; without the file they stay alone."""

from __future__ import annotations

import signal
import time
from typing import Any

from agent import known_peers
from tests.waiting import wait_for

NO_MDNS = {"PEERSERVE_MDNS": "false"}


def alive(agent: Any) -> set[str]:
    return {m["node_id"] for m in agent.get("/cluster").json()["members"] if m["status"] == "alive"}


def power_cut_and_restart(a: Any, b: Any, forget: bool) -> None:
    for x in (a, b):
        x.stop(signal.SIGKILL)
        x.args = [arg for arg in x.args if not arg.startswith("--seeds") and "://" not in arg]  # no seeds now
        if forget:
            (x.data_dir / known_peers.FILE_NAME).unlink()
    a.start()
    b.start()


def together(agents: Any) -> tuple[Any, Any]:
    a = agents("ka", env=NO_MDNS)
    b = agents("kb", "--seeds", a.url, env=NO_MDNS)  # b knows a only from its seed; a learns b from b's heartbeat
    wait_for(lambda: alive(a) >= {"ka", "kb"} and alive(b) >= {"ka", "kb"}, 20)
    for x, other in ((a, "kb"), (b, "ka")):
        saved = known_peers.load(x.data_dir)
        assert [p.node_id for p in saved] == [other] and saved[0].peer_url.startswith("https://127.0.0.1:")
    return a, b


def test_restarted_agents_find_each_other_from_their_known_peers(agents: Any) -> None:
    a, b = together(agents)
    power_cut_and_restart(a, b, forget=False)
    wait_for(lambda: alive(a) >= {"ka", "kb"} and alive(b) >= {"ka", "kb"}, 10)
    leader = lambda x: x.get("/cluster").json()["leader"]  # noqa: E731
    wait_for(lambda: leader(a) is not None and leader(a) == leader(b), 10)


def test_without_the_saved_peers_the_same_restart_leaves_each_alone(agents: Any) -> None:
    a, b = together(agents)
    power_cut_and_restart(a, b, forget=True)
    time.sleep(4.0)  # two dead-probe periods and more: nothing tells either where the other is
    assert alive(a) == {"ka"} and alive(b) == {"kb"}
