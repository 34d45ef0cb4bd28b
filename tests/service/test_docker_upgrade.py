"""Make-before-break within a full board's memory, on a real Docker Engine (decisions.stop_first).

A node whose memory holds one server of each of two models, no more: both go outdated at once (the catalogue
names a new image, as an upgrade does). Each model's replacement cannot start beside its old server, so the node
stops one outdated server first, starts its replacement once it is gone, and only when that one is ready does the
other model take its turn. Checked against what the daemon itself lists, sampled all along, and the agent's log;
clients send requests for both models through the agent the whole time and every one is answered.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import psutil
import pytest

from agent.runtime.docker import started_at
from scripts.dockerd import PrivateDockerd
from tests.service.conftest import end

pytestmark = pytest.mark.docker

MODELS = {"half_plus_two": 2.5, "half_plus_three": 3.5}  # model -> its answer to the instance 1.0
NEW_IMAGE = "peerserve/modelserver:upgrade-test"
DRAIN_S = 1.0
RECONCILE_S = 0.5
SAMPLE_S = 0.05


def catalogue(image: str, mem_mb: float) -> str:
    """Two models, each ``mem_mb``: two servers fit the board's memory, a third does not."""
    entries = [
        f'[[models]]\nname = "{m}"\nimage = "{image}"\nstand_in = "{m}"\nmodel_path = "/models/{m}"\n'
        f"model_version = 1\nmem_mb = {mem_mb:.0f}\ncompute = 5\nexec_ms = {{ default = 1.0 }}\n"
        for m in MODELS
    ]
    return f'version = "{image}"\n\n' + "\n".join(entries)


@dataclass
class Watch:
    """What the daemon lists and what the agent publishes as ready, sampled every SAMPLE_S, and the answers."""

    daemon: list[tuple[float, frozenset[tuple[str, str, str]]]] = field(default_factory=list)  # (id, model, image)
    ready: list[tuple[float, frozenset[str]]] = field(default_factory=list)  # models with a ready server
    answers: list[tuple[float, str, str]] = field(default_factory=list)  # (when, model, "ok" or what failed)
    stop: threading.Event = field(default_factory=threading.Event)


def sample_daemon(client: Any, node: str, w: Watch) -> None:
    while not w.stop.is_set():
        # one listing call (the low-level API): the SDK's list inspects each container after, and one removed
        # in between raises NotFound
        listed = client.api.containers(all=True, filters={"label": f"peerserve.node={node}"})
        seen = frozenset((c["Id"], c["Labels"]["peerserve.model"], c["Image"]) for c in listed)
        if not w.daemon or w.daemon[-1][1] != seen:
            w.daemon.append((time.monotonic(), seen))
        time.sleep(SAMPLE_S)


def sample_ready(url: str, w: Watch) -> None:
    with httpx.Client(timeout=10) as http:
        while not w.stop.is_set():
            node = http.get(f"{url}/stats/node").json()
            ready = frozenset(i["model"] for i in node["instances"] if i["ready"])
            if not w.ready or w.ready[-1][1] != ready:
                w.ready.append((time.monotonic(), ready))
            time.sleep(SAMPLE_S)


def send(url: str, model: str, w: Watch) -> None:
    """One client of ``model`` through the agent: a request every 50 ms, each answer checked."""
    with httpx.Client(timeout=30) as http:
        while not w.stop.is_set():
            try:
                r = http.post(f"{url}/services/{model}/v1/models/{model}:predict", json={"instances": [1.0]})
                ok = r.status_code == 200 and r.json() == {"predictions": [MODELS[model]]}
                w.answers.append((time.monotonic(), model, "ok" if ok else f"HTTP {r.status_code}: {r.text[:200]}"))
            except httpx.HTTPError as exc:
                w.answers.append((time.monotonic(), model, f"{type(exc).__name__}: {exc}"))
            time.sleep(0.05)


def dark_spells(w: Watch, model: str, start: float, end: float) -> list[tuple[float, float]]:
    """The spells from ``start`` on during which ``model`` had no ready server, as the agent published it."""
    before = [(start, ready) for at, ready in w.ready if at < start][-1:]
    spells: list[tuple[float, float]] = []
    since: float | None = None
    for at, ready in before + [(at, ready) for at, ready in w.ready if at >= start]:
        if model not in ready and since is None:
            since = at
        elif model in ready and since is not None:
            spells.append((since, at))
            since = None
    if since is not None:
        spells.append((since, end))
    return spells


def daemon_events(w: Watch) -> list[tuple[str, str]]:
    """("start" | "stop", container id) in the order the daemon's listing showed them."""
    events: list[tuple[str, str]] = []
    for (_, before), (_, after) in zip(w.daemon, w.daemon[1:], strict=False):
        was, now = {c[0] for c in before}, {c[0] for c in after}
        events += [("stop", c) for c in sorted(was - now)] + [("start", c) for c in sorted(now - was)]
    return events


def log_events(log: str) -> list[tuple[str, str]]:
    """("start" | "stop" | "stop first", short id) in the order the agent logged them."""
    pattern = re.compile(r"started container (\w{12}) for|stopped container (\w{12})|stopping outdated (\w{12})")
    out: list[tuple[str, str]] = []
    for m in pattern.finditer(log):
        kind = "start" if m.group(1) else "stop" if m.group(2) else "stop first"
        out.append((kind, m.group(1) or m.group(2) or m.group(3)))
    return out


@pytest.fixture
def engine(agents: Any, docker_engine: PrivateDockerd) -> Iterator[Any]:
    """A client of the private engine. Set up after ``agents`` and so torn down before it: it ends the agents the
    test started before it removes the managed containers, else an agent still running started again what was
    removed (its reconcile loop), and that container (restart policy unless-stopped) outlived the test: the leak
    guard killed it after every later test and the engine restarted it (a CI run: 22 teardown errors)."""
    client = docker.DockerClient(base_url=docker_engine.host)
    yield client
    for agent in agents.started:
        end(agent)
    for c in client.containers.list(all=True, filters={"label": "peerserve.managed=true"}):
        c.remove(force=True)
    client.close()


def test_a_full_board_upgrades_one_model_at_a_time_on_a_real_engine(
    agents: Any, engine: Any, docker_engine: PrivateDockerd, tmp_path: Path
) -> None:
    total_mb = psutil.virtual_memory().total / 2**20
    mem_mb = 0.4 * total_mb  # two servers take 80 % of the board; a third (an old one beside a new) 120 %
    cat = tmp_path / "catalogue.toml"
    cat.write_text(catalogue("peerserve/modelserver:latest", mem_mb))
    env = {**docker_engine.env, "PEERSERVE_INSTANCE_DRAIN_S": str(DRAIN_S),
           "PEERSERVE_RECONCILE_INTERVAL_S": str(RECONCILE_S), "PEERSERVE_CATALOGUE_POLL_S": "0.5"}  # fmt: skip
    a = agents("a", "--runtime", "docker", "--node-id", "dock-u", "--no-discovery", "--catalogue", str(cat), env=env)
    w = Watch()
    samplers = [threading.Thread(target=sample_daemon, args=(engine, "dock-u", w)),
                threading.Thread(target=sample_ready, args=(a.url, w))]  # fmt: skip
    for t in samplers:
        t.start()
    try:
        asked = time.monotonic()
        assert a.put_desired(1, dict.fromkeys(MODELS, 1)).status_code == 200
        for m in MODELS:
            a.wait_ready(m, timeout=60)
        # one server start, as this board does it: from the command to both new servers ready (they start together)
        one_start_s = time.monotonic() - asked
        mine = {"label": "peerserve.node=dock-u"}
        old = {c.labels["peerserve.model"]: c for c in engine.containers.list(filters=mine)}
        assert sorted(old) == sorted(MODELS)

        # the upgrade's image: a new image id, so every container created from the old one is outdated
        engine.images.build(fileobj=io.BytesIO(b"FROM peerserve/modelserver:latest\nLABEL peerserve.upgrade=2\n"),
                            tag=NEW_IMAGE, rm=True)  # fmt: skip
        clients = [threading.Thread(target=send, args=(a.url, m, w)) for m in MODELS for _ in range(2)]
        for t in clients:
            t.start()
        time.sleep(1.0)  # both served before the upgrade begins
        upgraded = time.monotonic()
        cat.write_text(catalogue(NEW_IMAGE, mem_mb))

        def done() -> bool:
            running = w.daemon[-1][1] if w.daemon else frozenset()
            return sorted(c[2] for c in running) == [NEW_IMAGE] * 2 and w.ready[-1][1] == frozenset(MODELS)

        deadline = time.monotonic() + 120
        while not done():
            assert time.monotonic() < deadline, f"upgrade not done in 120 s: {w.daemon[-1]}, {w.ready[-1]}"
            time.sleep(0.2)
        time.sleep(1.0)  # both served after it
        finished = time.monotonic()
    finally:
        w.stop.set()
        for t in samplers + (clients if "clients" in locals() else []):
            t.join(30)

    # every request for either model was answered, all through the upgrade
    failed = [x for x in w.answers if x[2] != "ok"]
    assert not failed, failed[:5]
    for m in MODELS:
        assert sum(1 for _, model, _ in w.answers if model == m) > 20

    # the daemon never held more than the board's two servers, nor left both models without one at once
    during = [seen for at, seen in w.daemon if at >= upgraded]
    assert all(len(seen) <= 2 for seen in during), during
    assert all({c[1] for c in seen} for seen in during), during

    # one model dark at a time, each for no longer than a stop and one server start
    spells = {m: dark_spells(w, m, upgraded, finished) for m in MODELS}
    assert all(len(s) == 1 for s in spells.values()), spells
    (a_from, a_to), (b_from, b_to) = sorted(s[0] for s in spells.values())
    assert a_to <= b_from, spells  # the second model went dark only once the first was back
    bound = DRAIN_S + 2 * RECONCILE_S + one_start_s + 2.0  # drain, the stop (~0.5 s with init), sampling
    assert all(to - since <= bound for since, to in (s[0] for s in spells.values())), (spells, bound)

    # the daemon's steps are the node's log: the older model's server stopped first, its replacement started, then
    # the other's; each old server was stopped for want of memory (stop_first), not beside its replacement
    first = min(old.values(), key=lambda c: (started_at(c.attrs), c.id))  # the order stop_first takes them in
    second = next(c for c in old.values() if c.id != first.id)
    seen = daemon_events(w)[-4:]
    new = {m: next(c[0] for c in w.daemon[-1][1] if c[1] == m) for m in MODELS}
    m1, m2 = first.labels["peerserve.model"], second.labels["peerserve.model"]
    assert seen == [("stop", first.id), ("start", new[m1]), ("stop", second.id), ("start", new[m2])], seen
    logged = log_events(a.log.read_text())
    logged = logged[logged.index(("stop first", first.id[:12])) :]
    steps = [("stop first", first.id), ("stop", first.id), ("start", new[m1]),
             ("stop first", second.id), ("stop", second.id), ("start", new[m2])]  # fmt: skip
    assert logged == [(kind, cid[:12]) for kind, cid in steps], logged
    print(f"\nupgrade of two models on a full board: {finished - upgraded - 1.0:.1f} s; dark "
          + ", ".join(f"{m} {s[0][1] - s[0][0]:.2f} s" for m, s in spells.items())
          + f" (one server start {one_start_s:.2f} s); {len(w.answers)} requests, all answered")  # fmt: skip
