"""The cluster page (agent/ui/app.js) in Debian's headless Chromium against a stand-in agent on loopback whose
answers the test sets: what a rogue or broken agent can send, and an agent that stops answering mid-poll.

The stand-in serves the real page and assets with the real headers (agent/observe.py ``PAGE_HEADERS``, so the
Content-Security-Policy is in force) and counts the requests it gets: the test waits on what the page shows and
on those counts, never on a time of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.observe import ASSETS, PAGE_HEADERS, UI_DIR
from tests.browser import browser, console_errors, need_browser
from tests.waiting import wait_for


def member(node: str, models: list[Any]) -> dict[str, Any]:
    return {"node_id": node, "api_url": f"http://{node}:8400", "status": "alive", "models": models,
            "mem_available_mb": 1024.0, "gpu_load": None}  # fmt: skip


def cluster(**extra: Any) -> dict[str, Any]:
    return {"node_id": "a", "leader": "a", "term": 3, "role": "leader", "members": [member("a", ["half_plus_two"])],
            "last_placement": None, **extra}  # fmt: skip


class StandIn:
    """An agent's page routes on 127.0.0.1: ``answer`` is what /cluster and /ui/latency answer (JSON), or with
    ``hang`` set, /cluster holds every request until ``release`` is set."""

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"/cluster": cluster(), "/ui/latency": {"models": {}}}
        self.hang = threading.Event()
        self.release = threading.Event()
        self.counts = {"/cluster": 0, "held": 0}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def send(self, body: bytes, ctype: str, headers: dict[str, str]) -> None:
                self.send_response(200)
                for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in ("/", "/ui"):
                    return self.send((UI_DIR / "index.html").read_bytes(), "text/html", PAGE_HEADERS)
                name = path.removeprefix("/ui/static/")
                if name in ASSETS:
                    return self.send((UI_DIR / name).read_bytes(), ASSETS[name], PAGE_HEADERS)
                if path == "/cluster":
                    stand_in.counts["/cluster"] += 1
                    if stand_in.hang.is_set():
                        stand_in.counts["held"] += 1
                        stand_in.release.wait(120)
                return self.send(json.dumps(stand_in.answer.get(path, {})).encode(), "application/json", {})

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a request the page gave up on (a broken pipe once released): what the test wants

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def page() -> Iterator[tuple[StandIn, Any]]:
    need_browser()
    agent = StandIn()
    try:
        with browser() as driver:
            driver.get(agent.url + "/")
            yield agent, driver
    finally:
        agent.close()


def shown(driver: Any) -> dict[str, Any]:
    """What the page shows, read in one script (it re-renders every 2 s)."""
    return dict(
        driver.execute_script("""const b = document.getElementById('banner');
        return {banner: b.hidden ? '' : b.textContent, leader: document.getElementById('leader').textContent,
                models: [...document.querySelectorAll('#models tbody tr')].map(r => r.dataset.model || ''),
                rows: document.querySelector('#models tbody').innerText,
                placement: document.getElementById('placement').innerText,
                actions: document.querySelectorAll('#placement li').length}""")
    )


def test_model_names_of_object_prototype_keep_the_table() -> None:
    """review27a L3: ``where = {}`` made a model named "constructor" (a valid model name) throw on .push, and a
    latency series of "toString" was looked up on the prototype: the table went blank. Now Maps and own keys."""
    names = ["constructor", "toString", "valueOf", "hasOwnProperty", "__proto__", "half_plus_two"]
    with page() as (agent, driver):
        agent.answer["/cluster"] = cluster(
            members=[member("a", names), member("b", ["constructor"])],
            last_placement={"idle_running": {"a": {"constructor": 1}}, "actions": []},
        )
        agent.answer["/ui/latency"] = {"models": {"toString": {"kind": "inference", "points": [[-5, 1.5, 3]]}}}
        wait_for(lambda: sorted(shown(driver)["models"]) == sorted(names), 20)
        view = shown(driver)
        assert view["banner"] == "" and "a (1 idle), b" in view["rows"] and "p50 now 1.50 ms" in view["rows"]
        assert console_errors(driver) == []


def test_a_placement_of_odd_fields_still_renders_and_a_long_one_is_cut() -> None:
    """review27a L2: ``actions: [null]`` or ``nodes: "x"`` (which the wire let through until this session) made render
    throw on every poll, swallowed: the placement never showed and no banner said so. Now each field is read for what
    it is, at most 50 actions are listed with how many more, and a part that still fails says so in the banner."""
    good = {"op": "start", "count": 2, "model": "half_plus_two", "node": "a"}
    with page() as (agent, driver):
        agent.answer["/cluster"] = cluster(last_placement={"actions": [None, 5, "x", good], "nodes": "x", "at": "?",
                                                           "objective_ms": "fast", "leader": {"x": 1}})  # fmt: skip
        wait_for(lambda: "start 2 × half_plus_two on a" in shown(driver)["placement"], 20)
        assert shown(driver)["actions"] == 1 and shown(driver)["banner"] == ""
        agent.answer["/cluster"] = cluster(last_placement={"actions": [good] * 5600, "nodes": ["a"]})
        wait_for(lambda: "… and 5550 more" in shown(driver)["placement"], 20)
        assert shown(driver)["actions"] == 51
        agent.answer["/cluster"] = cluster(members="x", last_placement={"actions": None, "nodes": None})
        wait_for(lambda: "none: the placement stands" in shown(driver)["placement"], 20)
        assert shown(driver)["banner"] == "" and console_errors(driver) == []
        # a part that throws all the same (here made to): the banner says which, the other parts still show
        driver.execute_script("renderPlacement = () => { throw new Error('boom'); }")
        wait_for(lambda: "could not be shown (placement: boom)" in shown(driver)["banner"], 20)
        assert shown(driver)["leader"] == "a"


def test_an_agent_that_stops_answering_shows_lost_contact_and_polling_goes_on() -> None:
    """review27a L1: fetch had no timeout and the next poll was set only once one ended, so one /cluster request the
    agent never answered stopped the polling for good, and the lost-contact banner (shown only by a failed request)
    never came. Now each request is given up after 4 s and a timer shows the banner once the last answer is 6 s old."""
    with page() as (agent, driver):
        wait_for(lambda: shown(driver)["leader"] == "a", 20)
        agent.hang.set()
        wait_for(lambda: "Lost contact" in shown(driver)["banner"], 30)
        held = agent.counts["held"]
        wait_for(lambda: agent.counts["held"] >= held + 2, 30)  # the page asks again while the first is held
        agent.hang.clear()
        wait_for(lambda: shown(driver)["banner"] == "", 30)  # answers again: the banner goes
        assert "no answer in 4 s" not in shown(driver)["banner"]
