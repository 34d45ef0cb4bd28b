"""Leader election for peerserve: a sans-IO state machine (stdlib only; see machine.py)."""

from coordinator_election.machine import (
    Action,
    Announce,
    BecameFollower,
    BecameLeader,
    Broadcast,
    Election,
    ElectionConfig,
    Event,
    Message,
    Priority,
    Received,
    Role,
    Send,
    Tick,
    Vote,
    VoteRequest,
)

__all__ = [
    "Action",
    "Announce",
    "BecameFollower",
    "BecameLeader",
    "Broadcast",
    "Election",
    "ElectionConfig",
    "Event",
    "Message",
    "Priority",
    "Received",
    "Role",
    "Send",
    "Tick",
    "Vote",
    "VoteRequest",
]
