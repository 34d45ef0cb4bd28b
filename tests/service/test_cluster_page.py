"""The cluster page at GET / in Debian's headless Chromium, against three real agents on loopback.

The agents find each other through --seeds (mDNS off), so nothing here depends on fixed addresses.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from tests.browser import browser, console_errors, dump_dom, need_browser, save_screenshot
from tests.service.conftest import PLAIN, free_port
from tests.waiting import wait_for

PREDICT = "/services/{m}/v1/models/{m}:predict"
PAGE_TOKEN = "cluster-page-test-token-0123456789"


def cluster(agent: Any) -> dict[str, Any]:
    try:
        return dict(agent.get("/cluster").json())
    except (httpx.HTTPError, ValueError):
        return {}


def cards(driver: Any) -> dict[str, str]:
    """node id -> status as the page shows it (read in one script: the page re-renders every 2 s)."""
    script = "return [...document.querySelectorAll('.member')].map(c => [c.dataset.node, c.dataset.status])"
    return dict(driver.execute_script(script))


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).innerText", element_id))


def start_three(agents: Any) -> list[Any]:
    names, ports = ["a", "b", "c"], [free_port() for _ in range(3)]
    started = []
    for i, name in enumerate(names):
        seeds = ",".join(f"http://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i)
        started.append(
            agents(name, "--cluster-token", PAGE_TOKEN, "--seeds", seeds, "--placement-period-s", "2",
                   port=ports[i], env={"PEERSERVE_MDNS": "0"})
        )  # fmt: skip
    return started


def test_cluster_page_shows_members_leader_placement_latency_and_follows_a_kill(agents: Any) -> None:
    need_browser()
    a, b, c = start_three(agents)
    everyone = {"a", "b", "c"}

    def settled() -> bool:
        view = cluster(a)
        alive = {m["node_id"] for m in view.get("members", []) if m["status"] == "alive"}
        return alive == everyone and view.get("leader") is not None and view.get("last_placement") is not None

    wait_for(settled, 30, step=0.2)
    for i in range(12):  # some traffic, so the latency charts have points
        model = "half_plus_two" if i % 2 else "xor_mlp"
        body = {"instances": [1.0]} if model == "half_plus_two" else {"instances": [[0, 1]]}
        assert PLAIN.post(a.url + PREDICT.format(m=model), json=body, timeout=30).status_code == 200
    leader = cluster(a)["leader"]

    dom = dump_dom(a.url + "/")
    assert all(f'data-node="{n}"' in dom for n in everyone) and f'id="leader">{leader}<' in dom

    with browser() as driver:
        driver.get(a.url + "/")
        wait_for(lambda: cards(driver) == dict.fromkeys(everyone, "alive") and text_of(driver, "leader") == leader, 10)
        wait_for(lambda: "p50 now" in text_of(driver, "models") and "objective" in text_of(driver, "placement"), 10)
        assert "half_plus_two" in text_of(driver, "models") and "xor_mlp" in text_of(driver, "models")
        assert console_errors(driver) == []
        print(f"\nscreenshot: {save_screenshot(driver, 'cluster-page.png')}")

        victim = b if leader == "b" else c  # a non-page node; the leader when it is one
        victim.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: cards(driver).get(victim.data_dir.name) == "dead", 10)
        if leader == victim.data_dir.name:
            wait_for(lambda: text_of(driver, "leader") not in (leader, "none"), 10)
        print(f"page shows {victim.data_dir.name} dead {time.monotonic() - killed:.1f} s after kill -9")
        assert cards(driver)["a"] == "alive" and console_errors(driver) == []
        save_screenshot(driver, "cluster-page-after-kill.png")

        driver.set_window_size(390, 844)  # a phone: one column, nothing wider than the screen
        time.sleep(0.3)
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        save_screenshot(driver, "cluster-page-phone.png")

        other = c if victim is b else b  # with every peer gone, the page says this agent is isolated
        other.stop(signal.SIGKILL)
        wait_for(lambda: "isolated" in text_of(driver, "banner"), 10)
        assert console_errors(driver) == []

        a.stop(signal.SIGKILL)  # the agent itself gone: a clear message instead of a stale page
        wait_for(lambda: "Lost contact" in text_of(driver, "banner"), 15)
        save_screenshot(driver, "cluster-page-lost-contact.png")


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_page_and_its_assets_are_served_offline(agents: Any, path: str) -> None:
    a = agents("solo", "--no-discovery")
    page = a.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN, nothing off this agent
    for asset in ("app.js", "style.css"):
        r = a.get(f"/ui/static/{asset}")
        assert r.status_code == 200 and "https://" not in r.text
    assert a.get("/ui/static/..%2fobserve.py").status_code == 404
    assert a.get("/ui/static/index.html").status_code == 404
