"""The solver worker lives only while its agent leads: real agents on loopback (seeds, no mDNS)."""

from __future__ import annotations

import signal
from typing import Any

import psutil

from tests.service.conftest import free_port
from tests.waiting import wait_for


def workers(agent: Any) -> list[psutil.Process]:
    assert agent.proc is not None
    return [c for c in psutil.Process(agent.proc.pid).children() if "agent.solver_worker" in c.cmdline()]


def leader(agent: Any) -> str | None:
    return agent.get("/cluster").json().get("leader")  # type: ignore[no-any-return]


def term(agent: Any) -> int:
    return int(agent.get("/cluster").json().get("term", -1))


def test_worker_only_on_the_leader_and_gone_when_it_steps_down(agents: Any) -> None:
    pa, pb = free_port(), free_port()
    env = {"PEERSERVE_MDNS": "false"}
    a = agents("a", "--seeds", f"http://127.0.0.1:{pb}", env=env, port=pa)
    wait_for(lambda: leader(a) == "a" and len(workers(a)) == 1, 15)
    b = agents("b", "--seeds", f"http://127.0.0.1:{pa}", env=env, port=pb)
    wait_for(lambda: leader(b) == "a", 15)
    assert workers(b) == []  # a follower keeps no solver process

    assert a.proc is not None
    a.proc.send_signal(signal.SIGSTOP)  # a hangs: b takes over and starts its own worker
    try:
        wait_for(lambda: leader(b) == "b" and len(workers(b)) == 1, 20)
        a_old, b_led = workers(a), workers(b)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # Two leaders that hear each other resolve to one (either may win the new term): the one that
    # stepped down has stopped its worker, and only the leader runs one.
    wait_for(lambda: leader(a) == leader(b) and term(a) == term(b), 20)
    winner, loser = (a, b) if leader(a) == "a" else (b, a)
    deposed = b_led if winner is a else a_old
    _gone, alive = psutil.wait_procs(deposed, timeout=10)
    assert not alive, "a deposed leader kept its solver worker"
    wait_for(lambda: len(workers(winner)) == 1 and workers(loser) == [], 10)
