"""DockerRuntime against a real Docker Engine (private dockerd, locally built stand-in image)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from agent.catalogue import ModelSpec
from agent.errors import InstanceStartError, RuntimeUnavailable
from agent.runtime.base import probe_available
from agent.runtime.docker import DIGEST_LABEL, DockerLog, DockerRuntime, _parse_time
from scripts.dockerd import PrivateDockerd
from tests.service.conftest import PLAIN, end

pytestmark = pytest.mark.docker


def spec(name: str = "half_plus_two", image: str = "peerserve/modelserver:latest", mem: float = 64) -> ModelSpec:
    return ModelSpec(name, image, name, f"/models/{name}", 1, mem, 5, {"default": 1.0})


@pytest.fixture
def engine(agents: Any, docker_engine: PrivateDockerd, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A client of the private engine. Set up after ``agents`` and so torn down before it: it ends the agents the
    test started before it removes the managed containers, else an agent still running started again what was
    removed (its reconcile loop), and that container (restart policy unless-stopped) outlived the test: the leak
    guard killed it after every later test and the engine restarted it (a CI run: 22 teardown errors)."""
    monkeypatch.setenv("DOCKER_HOST", docker_engine.host)
    client = docker.DockerClient(base_url=docker_engine.host)
    yield client
    for agent in agents.started:
        end(agent)
    for c in client.containers.list(all=True, filters={"label": "peerserve.managed=true"}):
        c.remove(force=True)
    client.close()


async def _wait_available(url: str, model: str, timeout: float = 30) -> float:
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        while time.monotonic() - started < timeout:
            if await probe_available(http, url, model):
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    raise AssertionError(f"{model} at {url} not AVAILABLE in {timeout} s")


def test_start_predict_list_stop(engine: Any) -> None:
    async def scenario() -> None:
        rt = DockerRuntime("node-a", "127.0.0.1")
        inst = await rt.start(spec(), term=7)
        await _wait_available(inst.url, "half_plus_two")
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{inst.url}/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0, 5.0]})
        assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
        [listed] = await rt.list()
        assert listed.id == inst.id and listed.running and listed.term == 7 and listed.model == "half_plus_two"
        assert listed.mem_mb is not None and listed.mem_mb > 1  # measured: the container's process tree
        c = engine.containers.get(inst.id)
        assert c.labels["peerserve.managed"] == "true" and c.labels["peerserve.node"] == "node-a"
        assert c.attrs["HostConfig"]["Memory"] == 64 * 2**20
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert c.attrs["HostConfig"]["Init"] is True
        log_config = {"Type": "json-file", "Config": {"max-size": "10240k", "max-file": "3"}}  # the defaults
        assert c.attrs["HostConfig"]["LogConfig"] == log_config
        assert await DockerRuntime("node-b", "127.0.0.1").list() == []  # another node's view
        await rt.stop(inst.id)
        assert await rt.list() == []
        await rt.stop(inst.id)  # stopping twice is fine
        await rt.close()

    asyncio.run(scenario())


def test_a_model_servers_log_is_bounded_on_the_engine(engine: Any) -> None:
    """Containers used to start with the engine's default json-file log, unbounded: every line a model server
    writes stayed on the board's disk. With a 64 KiB x 2 bound, thousands of logged lines keep the container's
    log files (as the engine writes them) within it, and the newest lines are still there for `docker logs`."""

    async def scenario() -> None:
        rt = DockerRuntime("node-a", "127.0.0.1", log=DockerLog(max_mb=1 / 16, files=2))
        inst = await rt.start(spec(), term=1)
        await _wait_available(inst.url, "half_plus_two")
        c = engine.containers.get(inst.id)
        assert c.attrs["HostConfig"]["LogConfig"] == {"Type": "json-file",
                                                      "Config": {"max-size": "64k", "max-file": "2"}}  # fmt: skip
        log_path = Path(c.attrs["LogPath"])
        # 6,000 lines of ~100 bytes (~1 MB as json-file writes them) on the container's own output, as a model
        # server's per-request lines arrive: PID 1 (docker-init) holds the stream the engine logs
        write = ("import sys\nsys.stdout = open('/proc/1/fd/2', 'w')\n"
                 "for i in range(6000): print(f'line {i:05d}', 'x' * 80)")  # fmt: skip
        assert (await asyncio.to_thread(c.exec_run, ["python3", "-c", write])).exit_code == 0
        logged = await settled(lambda: c.logs().count(b"line "), 20)
        files = sorted(log_path.parent.glob(log_path.name + "*"))
        sizes = [f.stat().st_size for f in files]
        assert len(files) == 2 and sum(sizes) <= 2 * 64 * 1024 + 4096, sizes  # rotated at least once, then bounded
        assert 100 < logged < 6000 and c.logs().rstrip().endswith(b"line 05999 " + b"x" * 80)  # the newest kept
        await rt.stop(inst.id)
        await rt.close()

    asyncio.run(scenario())


def test_a_restarted_container_is_as_old_as_its_last_start(engine: Any) -> None:
    """review12a F3: after a reboot or a dockerd restart, the restart policy starts containers made long ago; one
    still loading its model must not look older than instance_ready_timeout_s (it would be replaced as stuck)."""

    async def scenario() -> None:
        rt = DockerRuntime("node-a", "127.0.0.1")
        try:
            inst = await rt.start(spec(), term=1)
            await asyncio.sleep(2.0)
            restarted = time.time()
            await asyncio.to_thread(engine.containers.get(inst.id).restart, timeout=5)
            [listed] = await rt.list()
            created = _parse_time(engine.containers.get(inst.id).attrs["Created"])
            assert listed.id == inst.id and listed.running
            assert listed.started_at >= restarted - 0.5 and listed.started_at > created + 1.5
            await rt.stop(inst.id)
        finally:
            await rt.close()

    asyncio.run(scenario())


async def settled(count: Callable[[], int], timeout: float) -> int:
    """The last ``count()`` once the log has settled: it stops growing (the engine writes the lines a moment later)."""
    started, last = time.monotonic(), -1
    while time.monotonic() - started < timeout:
        now = await asyncio.to_thread(count)
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.5)
    return last


def test_missing_image_is_named_and_never_pulled(engine: Any) -> None:
    before = {t for i in engine.images.list() for t in i.tags}

    async def scenario() -> None:
        rt = DockerRuntime("node-a", "127.0.0.1")
        with pytest.raises(InstanceStartError, match=r"tensorflow/serving:9\.9\.9"):
            await rt.start(spec(image="tensorflow/serving:9.9.9"), term=1)

    asyncio.run(scenario())
    assert {t for i in engine.images.list() for t in i.tags} == before


def test_dead_daemon_is_reported_not_raised_wildly(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")

    async def scenario() -> None:
        rt = DockerRuntime("node-a", "127.0.0.1")
        with pytest.raises(RuntimeUnavailable):
            await rt.list()
        with pytest.raises(RuntimeUnavailable):
            await rt.start(spec(), term=1)

    asyncio.run(scenario())


def test_agent_with_dead_daemon_stays_up_and_says_why(agents: Any, tmp_path: Any) -> None:
    a = agents("a", "--runtime", "docker", "--no-discovery", env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    health = a.get("/health").json()
    assert health["status"] == "degraded" and "Docker Engine unreachable" in health["runtime"]["error"]
    assert a.put_desired(1, {"half_plus_two": 1}).status_code == 200
    r = a.get("/services/half_plus_two")
    assert r.status_code == 503
    assert a.get("/health").status_code == 200


def test_agent_restart_adopts_containers_and_trims_foreign_ones(agents: Any, engine: Any, docker_engine: Any) -> None:
    env = docker_engine.env
    a = agents("a", "--runtime", "docker", "--node-id", "dock-a", "--no-discovery", env=env)
    assert a.put_desired(3, {"half_plus_two": 1}).status_code == 200
    [first] = a.wait_ready("half_plus_two", timeout=60)
    r = PLAIN.post(a.url + "/services/half_plus_two/v1/models/half_plus_two:predict", json={"instances": [1, 2, 5]})
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    a.stop(signal.SIGKILL)
    assert engine.containers.get(first["id"]).status == "running"  # outlives the agent

    async def plant() -> str:  # a labelled container this node should not run
        inst = await DockerRuntime("dock-a", "127.0.0.1").start(spec("xor_mlp", mem=96), term=2)
        return inst.id

    foreign = asyncio.run(plant())
    a.start()
    [again] = a.wait_ready("half_plus_two", timeout=60)
    assert again["id"] == first["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(c.id == foreign for c in engine.containers.list(all=True, sparse=True)):
        time.sleep(0.2)
    assert all(c.id != foreign for c in engine.containers.list(all=True, sparse=True))
    assert a.put_desired(4, {}).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and engine.containers.list(
        all=True, sparse=True, filters={"label": "peerserve.node=dock-a"}
    ):
        time.sleep(0.2)
    assert engine.containers.list(all=True, sparse=True, filters={"label": "peerserve.node=dock-a"}) == []


def test_parallel_starts_of_one_model_get_distinct_names(engine: Any) -> None:
    """review12f F1: the name's suffix came from the clock, so starts in one millisecond collided (409)."""

    async def scenario() -> None:
        rt = DockerRuntime("node-a", "127.0.0.1")
        started = await asyncio.gather(*(rt.start(spec(), term=1) for _ in range(8)))
        names = {engine.containers.get(i.id).name for i in started}
        assert len(names) == 8 and all(n.startswith("peerserve-node-a-half_plus_two-") for n in names)
        await rt.close()

    asyncio.run(scenario())


def test_a_container_created_with_other_settings_is_outdated_and_one_with_the_same_is_not(engine: Any) -> None:
    """review12f F2: every labelled container was adopted for good, so an upgrade's create-time settings (the log
    bound, the image, its command) never reached the ones already running. Each carries a digest of what it was
    created with; the runtime compares it with what it would create now."""

    async def scenario() -> None:
        catalogue = {"half_plus_two": spec()}
        rt = DockerRuntime("node-a", "127.0.0.1", spec_of=catalogue.get)
        same = await rt.start(spec(), term=1)
        other_log = DockerRuntime("node-a", "127.0.0.1", log=DockerLog(max_mb=1, files=2))
        changed = await other_log.start(spec(), term=1)
        c = engine.containers.get(same.id)
        labels = {k: v for k, v in c.labels.items() if k != DIGEST_LABEL}  # as an agent before digests made it
        unlabelled = engine.containers.run(
            "peerserve/modelserver:latest", detach=True, labels=labels,
            environment={"MODEL_NAME": "half_plus_two", "MODEL_BASE_PATH": "/models"},
        )  # fmt: skip
        listed = {i.id: i for i in await rt.list()}
        assert not listed[same.id].outdated and listed[changed.id].outdated and listed[unlabelled.id].outdated
        assert "(outdated)" in listed[changed.id].detail
        assert not any(i.outdated for i in await DockerRuntime("node-a", "127.0.0.1").list())  # no catalogue: no check
        catalogue["half_plus_two"] = spec(mem=96)  # the catalogue changed: created with 64 MB, it is outdated now
        assert all(i.outdated for i in await rt.list())
        await rt.close()
        await other_log.close()

    asyncio.run(scenario())


def test_agent_replaces_an_outdated_container_after_the_new_one_is_ready(
    agents: Any, engine: Any, docker_engine: Any
) -> None:
    env = docker_engine.env
    a = agents("a", "--runtime", "docker", "--node-id", "dock-a", "--no-discovery", env=env)
    assert a.put_desired(3, {"half_plus_two": 1}).status_code == 200
    [first] = a.wait_ready("half_plus_two", timeout=60)
    a.stop(signal.SIGKILL)
    engine.containers.get(first["id"]).remove(force=True)

    async def plant() -> str:  # what an older agent created: another log bound
        old = DockerRuntime("dock-a", "127.0.0.1", log=DockerLog(max_mb=1, files=2))
        inst = await old.start(spec(), term=3)
        await _wait_available(inst.url, "half_plus_two")
        return inst.id

    outdated = asyncio.run(plant())
    a.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(c.id == outdated for c in engine.containers.list(all=True, sparse=True)):
        time.sleep(0.2)
    assert all(c.id != outdated for c in engine.containers.list(all=True, sparse=True))
    [new] = a.wait_ready("half_plus_two", timeout=30)
    assert new["id"] != outdated
    assert engine.containers.get(new["id"]).attrs["HostConfig"]["LogConfig"]["Config"]["max-size"] == "10240k"


def test_digits_in_the_stand_in_image_answers_like_the_process_stand_in(engine: Any) -> None:
    from agent import digits

    async def scenario() -> list[list[float]]:
        rt = DockerRuntime("node-a", "127.0.0.1")
        inst = await rt.start(spec("digits"), term=1)
        try:
            await _wait_available(inst.url, "digits")
            rows = digits.heldout_set()[0][:20]
            async with httpx.AsyncClient() as http:
                r = await http.post(f"{inst.url}/v1/models/digits:predict", json={"instances": rows})
            assert r.status_code == 200, r.text
            return list(r.json()["predictions"])
        finally:
            await rt.stop(inst.id)
            await rt.close()

    predictions = asyncio.run(scenario())
    local = [digits.load_weights().probabilities(row) for row in digits.heldout_set()[0][:20]]
    flat = [p for row in predictions for p in row]
    assert flat == pytest.approx([p for row in local for p in row])  # the image carries the same weights
