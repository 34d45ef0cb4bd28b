"""Where should this client's request for a model go? One answer, as a typed outcome.

When the model runs nowhere, it is provisioned here if this node has the memory (waiting up to
``provision_wait_s``), else the roomiest peer is asked to start it (agent/serving/provision.py).

``resolve`` is the serving façade (``NodeAgent.resolve`` calls it): ranked endpoints, or provisioning
under way (retry later), or no node with the memory, or a model the catalogue does not know, or this agent
stopping (it starts no model and ends its wait for one: NodeAgent.begin_shutdown). The HTTP
layer (both protocols, the endpoint query) only maps these outcomes to responses.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.decisions import Choice, rank_endpoints, spread_ranked

if TYPE_CHECKING:
    from agent.node import NodeAgent

RETRY_AFTER_S = 2


@dataclass(frozen=True)
class Ranked:
    """Ready endpoints, best first."""

    choices: tuple[Choice, ...]


@dataclass(frozen=True)
class Provisioning:
    """No server is ready yet; ``node`` was chosen to run one."""

    node: str
    reason: str
    retry_after_s: int = RETRY_AFTER_S


@dataclass(frozen=True)
class NoCapacity:
    """No node has the memory the model needs."""

    reason: str


@dataclass(frozen=True)
class Unknown:
    """The model is not in the catalogue."""

    model: str
    known: tuple[str, ...]


@dataclass(frozen=True)
class ShuttingDown:
    """This agent is stopping (NodeAgent.begin_shutdown): it starts no model, and a wait for one has ended."""

    retry_after_s: int = RETRY_AFTER_S


Outcome = Ranked | Provisioning | NoCapacity | Unknown | ShuttingDown


async def resolve(
    agent: NodeAgent, model: str, client: str, reported: Mapping[str, float], live: Mapping[str, int] | None = None
) -> Outcome:
    """Rank the ready endpoints of ``model`` for ``client`` (``live``: requests in flight per endpoint URL)."""
    spec = agent.catalogue.current.get(model)
    if spec is None:
        return Unknown(model, tuple(sorted(agent.catalogue.current.models)))
    rtts = agent.client_rtts(client, reported)
    ranked = rank_endpoints(agent.candidates(model), rtts)
    if ranked:
        draws = random.random(), random.random()
        rule = agent.settings.endpoint_rule
        own = (agent.settings.node_id, agent.slots)  # bounded as the leader bounds it
        placement, slots = agent.last_placement, agent.placement_slots  # slots parsed once per summary
        return Ranked(tuple(spread_ranked(ranked, placement, model, rtts, draws[0], live, draws[1], rule, own, slots)))
    if agent.shutting_down:
        return ShuttingDown()
    target, reason = agent.provision_decision(spec)
    if target is None:
        return NoCapacity(reason)
    if target != agent.settings.node_id:
        agent.provision_requests.ask(agent, target, model)  # explicit, in the background
    if target == agent.settings.node_id and await agent.provision_locally(model, agent.settings.provision_wait_s):
        ranked = rank_endpoints(agent.candidates(model), rtts)
        if ranked:
            return Ranked(tuple(ranked))
    if agent.shutting_down:  # the wait above ended for the stop
        return ShuttingDown()
    return Provisioning(target, reason)
