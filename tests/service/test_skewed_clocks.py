"""Real agents whose wall clocks disagree (``clock_offset_s``: every wall-clock reading of an agent goes through
NodeAgent.clock), on loopback, seeds only, process runtime.

What the cluster tolerates (docs/architecture.md, "Clocks"): two boards whose clocks are less than the peer plane's
freshness window apart (identity.WINDOW_S, 30 s) work together as if their clocks agreed, the leader stamping every
node's request records on its own clock; two boards further apart refuse each other's messages, and say so.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from agent.identity import WINDOW_S
from tests.service.conftest import free_port
from tests.waiting import wait_for

OFF = 14.0  # one board this far ahead, one this far behind: 28 s apart, inside the 30 s window
WINDOW = 12.0  # the leader's request window (request_window_s), shorter than the boards' 28 s disagreement
PERIOD = 2.0  # placement_period_s
ENV = {"PEERSERVE_MDNS": "false", "PEERSERVE_PLACEMENT_PERIOD_S": str(PERIOD),
       "PEERSERVE_REQUEST_WINDOW_S": str(WINDOW)}  # fmt: skip
MODEL = "half_plus_two"


def cluster(a: Any) -> dict[str, Any]:
    return dict(a.get("/cluster").json())


def alive(a: Any) -> set[str]:
    return {m["node_id"] for m in cluster(a)["members"] if m["status"] == "alive"}


def test_agents_whose_clocks_are_28_s_apart_lead_place_and_count_every_nodes_requests(agents: Any) -> None:
    seed_port = free_port()
    # the board 14 s ahead leads (it starts first, alone): the one 14 s behind is 28 s behind the leader's clock,
    # longer than the request window
    k1 = agents("k1", env={**ENV, "PEERSERVE_CLOCK_OFFSET_S": str(OFF)}, port=seed_port)
    seed = f"http://127.0.0.1:{seed_port}"
    wait_for(lambda: cluster(k1)["leader"] == "k1", 15)
    k0 = agents("k0", "--seeds", seed, env=ENV)
    k2 = agents("k2", "--seeds", seed, env={**ENV, "PEERSERVE_CLOCK_OFFSET_S": str(-OFF)})
    everyone = [k0, k1, k2]
    names = {"k0", "k1", "k2"}
    wait_for(lambda: all(alive(a) == names for a in everyone), 30)
    wait_for(lambda: {(cluster(a)["leader"], cluster(a)["term"]) for a in everyone} == {("k1", cluster(k1)["term"])},
             30)  # fmt: skip
    term = cluster(k1)["term"]

    # a client of each board, through that board: each board's request log stamps its records by its own clock
    with httpx.Client(timeout=30) as http:
        for i, a in enumerate(everyone):
            rtt = ",".join(f"{b.node_id}={1 if b is a else 40}" for b in everyone)  # each phone at its own site
            headers = {"X-Peerserve-Client": f"phone{i}", "X-Peerserve-RTT": rtt}
            for _ in range(5):
                r = http.post(f"{a.url}/services/{MODEL}/v1/models/{MODEL}:predict", json={"instances": [1.0]},
                              headers=headers)  # fmt: skip
                assert r.status_code == 200, r.text
    last = time.monotonic()

    # every round from now counts the three boards' streams until the window has passed on the leader's clock, and
    # then none: a stream aged out early (the slow board's, 28 s old on arrival) or late (a fast one's) shows here
    seen: list[tuple[float, int, int]] = []  # (seconds after the last request, streams, term)
    at = None
    while time.monotonic() - last < WINDOW + 4 * PERIOD:
        c = cluster(k1)
        p = c.get("last_placement") or {}
        if p.get("at") != at:
            at = p.get("at")
            seen.append((time.monotonic() - last, int(p.get("requests", 0)), int(c["term"])))
        time.sleep(0.2)
    print(f"\nclocks +{OFF:g} / 0 / -{OFF:g} s: rounds (s after the last request, streams): "
          + ", ".join(f"{t:.1f}:{n}" for t, n, _ in seen))  # fmt: skip
    counted = [n for t, n, _ in seen if 2 * PERIOD < t < WINDOW - 2 * PERIOD]
    assert counted and all(n == 3 for n in counted), seen  # the slow board's records were not dropped as too old
    assert [n for t, n, _ in seen if t > WINDOW + 2 * PERIOD] == [0] * len(
        [t for t, _, _ in seen if t > WINDOW + 2 * PERIOD]
    )
    assert {x[2] for x in seen} == {term}  # the leader's lease held: no election while the clocks disagreed
    assert {(cluster(a)["leader"], cluster(a)["term"]) for a in everyone} == {("k1", term)}
    for a in everyone:  # nothing was refused between them
        assert "stale or future" not in a.log.read_text(), a.node_id


def test_a_board_past_the_window_is_refused_and_the_log_says_by_how_much(agents: Any) -> None:
    """The edge: 30 s apart is the first skew refused (identity.WINDOW_S; the transit time counts too). A board 31 s
    ahead is never admitted, and the seed's log names it, the skew and which way."""
    seed_port = free_port()
    k0 = agents("e0", env=ENV, port=seed_port)
    far = agents("e1", "--seeds", f"http://127.0.0.1:{seed_port}",
                 env={**ENV, "PEERSERVE_CLOCK_OFFSET_S": str(WINDOW_S + 1)})  # fmt: skip
    said = re.compile(r"a message signed by e1 is stamped 3[01]\.\d s ahead of this node's clock, over the 30 s")
    wait_for(lambda: said.search(k0.log.read_text()) is not None, 20)
    time.sleep(3)
    assert alive(k0) == {"e0"} and alive(far) == {"e1"}
