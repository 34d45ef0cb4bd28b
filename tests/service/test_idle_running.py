"""A Mode 1 plan past the instance bound keeps a running instance without traffic (``idle_running``,
solver.queue_running): over real HTTP the endpoint answer never puts it first, while it runs and stays a
fallback further down the answer."""

from __future__ import annotations

from typing import Any

import httpx

from tests.peer_tools import TestPeer
from tests.service.conftest import TOKEN

MODEL = "half_plus_two"
SAMPLES = 200


def command(a: Any, idle: int) -> None:
    """The leader's command: two instances here, this node's whole share for the site, ``idle`` of them idle."""
    lead = TestPeer("lead", TOKEN, a.data_dir.parent / "lead-identity")
    placement: dict[str, Any] = {
        "spread": [{"model": MODEL, "rtt_ms": {a.node_id: 1.0}, "shares": {a.node_id: 1.0}}],
        "planned_queue": {a.node_id: {MODEL: 0.0}},
    }
    if idle:
        placement["idle_running"] = {a.node_id: {MODEL: idle}}
    body = {"term": 1, "leader": "lead", "instances": {MODEL: 2}, "placement": placement}
    r = lead.request(a.node_id, a.peer_url, "PUT", "/control/desired", body)
    assert r.status_code == 200, r.text
    a.wait_ready(MODEL, 2)


def firsts(a: Any) -> list[str]:
    with httpx.Client(base_url=a.url, timeout=10) as http:
        answers = [http.get(f"/services/{MODEL}", headers={"X-Peerserve-Client": "c1"}).json() for _ in range(SAMPLES)]
    assert all(len(ans["alternatives"]) == 1 for ans in answers)  # both servers in every answer
    return [ans["url"] for ans in answers]


def test_the_idle_running_instance_is_never_drawn_first_but_stays_a_fallback(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    command(a, idle=0)
    both = firsts(a)
    assert len(set(both)) == 2, "without idle instances the share is split over both servers"
    command(a, idle=1)
    assert a.get("/cluster").json()["last_placement"]["idle_running"] == {a.node_id: {MODEL: 1}}
    only = firsts(a)
    assert len(set(only)) == 1 and only[0] == min(both), "the first server in rank order (URL) serves"


def test_the_cluster_page_marks_the_idle_running_instances(agents: Any) -> None:
    """The page's models table (Debian's headless Chromium) names the node and how many of its instances of
    the model the plan keeps running without traffic."""
    from tests.browser import browser, console_errors, need_browser
    from tests.waiting import wait_for

    need_browser()
    a = agents("a", "--no-discovery")
    command(a, idle=1)
    script = "return document.querySelector(`#models tr[data-model='${arguments[0]}']`)?.innerText || ''"
    with browser() as driver:
        driver.get(a.url + "/")
        wait_for(lambda: f"{a.node_id} (1 idle)" in driver.execute_script(script, MODEL), 10)
        assert console_errors(driver) == []
    command(a, idle=0)
    with browser() as driver:
        driver.get(a.url + "/")
        wait_for(lambda: a.node_id in driver.execute_script(script, MODEL), 10)
        assert "idle" not in driver.execute_script(script, MODEL)
