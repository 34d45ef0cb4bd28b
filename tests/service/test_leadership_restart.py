"""A real agent's election state across restarts: the vote is durable before the answer leaves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.leadership import Leadership, encode
from agent.node import NodeAgent
from agent.quorum import Grants
from agent.settings import load_settings
from coordinator_election import Announce, VoteRequest
from tests.peer_tools import leadership_up_a_minute


def _agent(data_dir: Path, token: str | None = None) -> NodeAgent:
    overrides = {"node_id": "n1", "data_dir": str(data_dir), "discovery": False}
    return NodeAgent(load_settings(env={}, overrides={**overrides, **({"cluster_token": token} if token else {})}))


TOKEN = "restart-cluster-token-0123456789ab"


def _announce(agent: NodeAgent, term: int, leader: str, memory: float) -> dict[str, Any]:
    """``leader``'s announce of ``term`` with its quorum certificate: n1's own signed grant, a majority of n1's view
    (no other member: discovery is off), as agent/quorum.py checks it."""
    assert agent.identity is not None
    grant = Grants(agent.identity).sign(term, leader)
    return {**encode(Announce(term, leader, (0, memory, leader))), "cert": [grant.to_json()]}


def test_a_restarted_agent_resumes_its_persisted_term_and_vote(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    lead = leadership_up_a_minute(agent)
    assert (lead.term, lead.machine.vote) == (0, None)
    lead.receive("n2", encode(VoteRequest(4, "n2", (0, 1.0, "n2"))))  # granted: n1 voted for n2 in term 4
    assert (lead.term, lead.machine.vote) == (4, "n2")
    assert agent.store.election_state() == (4, "n2")  # on disk before receive() returned (and the vote went out)
    asyncio.run(agent.stop())  # the process ends; a new one starts on the same data directory

    again = _agent(tmp_path)
    back = Leadership(again)
    assert (back.term, back.machine.vote) == (4, "n2")
    back.receive("n3", encode(VoteRequest(4, "n3", (0, 1.0, "n3"))))  # a rival of the same term: refused
    assert back.machine.vote == "n2" and again.store.election_state() == (4, "n2")
    again.store.observe_term(6, "n3")  # a leader's command of a newer term, then a restart: no vote in term 6
    asyncio.run(again.stop())
    third = Leadership(_agent(tmp_path))
    assert (third.term, third.machine.vote) == (6, None)
    asyncio.run(third.agent.stop())


def test_a_restarted_agent_keeps_the_one_leader_it_accepted_for_its_term(tmp_path: Path) -> None:
    agent = _agent(tmp_path, TOKEN)
    lead = leadership_up_a_minute(agent)
    lead.receive("n2", _announce(agent, 5, "n2", 1.0))  # follows n2 in term 5
    assert (lead.term, lead.leader, agent.store.election_accepted()) == (5, "n2", "n2")  # durable at once
    asyncio.run(agent.stop())

    again = _agent(tmp_path, TOKEN)
    back = Leadership(again)
    assert (back.term, back.machine.accepted, back.leader) == (5, "n2", None)  # no lease yet, term 5 is n2's
    back.receive("n3", _announce(again, 5, "n3", 2.0))  # a second leader of term 5: never followed
    assert back.leader is None and back.machine.accepted == "n2"
    back.receive("n2", encode(Announce(5, "n2", (0, 1.0, "n2"))))  # its renewal: no certificate needed
    assert back.leader == "n2"
    back.receive("n3", _announce(again, 6, "n3", 2.0))  # a newer term may have another leader (with a certificate)
    assert (back.term, back.leader, again.store.election_accepted()) == (6, "n3", "n3")
    asyncio.run(again.stop())
