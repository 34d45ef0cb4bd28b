"""A dead member that heartbeats us (it restarted) is checked at once, not at its next dead probe."""

from __future__ import annotations

from typing import Any, cast

from agent.discovery.membership import MembershipConfig, parse_peer_state
from agent.discovery.service import Discovery
from tests.unit.test_discovery import state

CFG = MembershipConfig(heartbeat_interval_s=0.5, suspect_after_s=1.0, dead_after_s=2.0, dead_probe_interval_s=2.0)
URL = "https://10.0.0.2:8401"


def test_a_dead_member_that_heartbeats_us_is_probed_at_once() -> None:
    d = Discovery("me", 8400, "10.0.0.1", "auto", local_state=cast(Any, None), peers=cast(Any, None),
                  http=cast(Any, None), config=CFG, models=lambda: ["m"], peer_port=8401, cluster="c",
                  use_mdns=False)  # fmt: skip
    m = d.membership
    m.advertised("p", "", "10.0.0.2", 0.0, URL)
    m.heartbeat_ok("p", parse_peer_state(state()), 0.1, URL)
    m.tick(2.2)  # silent for two seconds: dead
    m.heartbeat_sent("p", 2.2, URL)  # a dead probe just went out (and failed): the next one is due at 4.2
    assert m.members()[0].status == "dead" and m.due_heartbeats(2.3) == []
    d.heard_from("p", URL)  # its authenticated heartbeat reaches us: it restarted
    assert m.due_heartbeats(2.3) == [("p", URL)]
