"""Fencing: whether an agent obeys a leader's command (pure, stdlib only; docs/election.md "Fencing").

A command carries its leader's fencing token (term, leader). An agent obeys it only from the leader its own
election machine accepts for exactly that term: the machine never accepts two leaders in one term and never
goes back to a lower term (``Election.accepted``, persisted), so what an agent obeys is one leader per term,
in increasing terms, across restarts.
"""

from __future__ import annotations


def command_refusal(term: int, sender: str, own_term: int, own_leader: str | None) -> str | None:
    """Why a command of ``term`` from ``sender`` is refused by a node at ``own_term`` following ``own_leader``."""
    if term != own_term or sender != own_leader:
        return f"{sender} is not the leader this node accepts for term {term} (it follows {own_leader} at {own_term})"
    return None
