"""The client library and the client CLI against real agents on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from client import AsyncClient, Client, ClusterUnreachableError, NoCapacityError, UnknownModelError
from tests.service.test_agent_api import HUGE, _catalogue

# scripts/test.sh runs it with nothing else: fixed loopback addresses (127.0.0.2-7) for its agents
pytestmark = pytest.mark.serial


def test_discovers_agents_by_mdns_and_predicts(agents: Any) -> None:
    a = agents("a", host="127.0.0.2")
    b = agents("b", host="127.0.0.3")
    time.sleep(1.5)
    with Client(discover_interfaces=["127.0.0.1"], client_id="phone-1") as c:
        assert set(c._ordered_agents()) >= {a.url, b.url}
        assert c.predict("half_plus_two", instances=[1.0, 2.0, 5.0]) == {"predictions": [2.5, 3.0, 4.5]}
        assert c.predict("half_plus_two", inputs=[1.0], via_proxy=True) == {"outputs": [2.5]}
        ep = c.endpoint("half_plus_two")
        assert ep.model == "half_plus_two" and ep.url.startswith("http://127.0.0.")
        assert ep.why["rtt_source"] == "client"
        assert [e.model for e in c.endpoints()] == ["half_plus_two"]
        rtts = c.measure_rtts()
        assert set(rtts) == {"a", "b"} and all(0 < v < 1000 for v in rtts.values())
    log = a.get("/stats/requests?since=0").json()["requests"] + b.get("/stats/requests?since=0").json()["requests"]
    mine = [r for r in log if r["client"] == "phone-1@127.0.0.1"]
    assert mine and all(set(r["rtt_ms"]) == {"a", "b"} for r in mine)  # its RTTs reached the leader's stats


def test_fails_over_between_agents(agents: Any) -> None:
    a = agents("a", host="127.0.0.4")
    with Client(agents=["http://127.0.0.4:1", a.url], timeout=2) as c:
        assert c.endpoint("xor_mlp").node == "a"
        assert c.agents[0] == a.url  # the working agent is tried first from now on


def test_typed_errors(agents: Any, tmp_path: Any) -> None:
    a = agents("a", "--catalogue", _catalogue(tmp_path, HUGE), host="127.0.0.5")
    with Client(agents=[a.url]) as c:
        with pytest.raises(UnknownModelError):
            c.endpoint("resnet")
        with pytest.raises(NoCapacityError):
            c.predict("huge", instances=[1])
        with pytest.raises(ValueError):
            c.predict("half_plus_two")
    with Client(agents=["http://127.0.0.5:1"], timeout=1) as c, pytest.raises(ClusterUnreachableError):
        c.cluster()


def test_async_client(agents: Any) -> None:
    a = agents("a", host="127.0.0.6")

    async def scenario() -> None:
        async with AsyncClient(agents=[a.url]) as c:
            assert await c.predict("xor_mlp", instances=[[1, 0]]) is not None
            assert (await c.endpoint("xor_mlp")).node == "a"
            assert (await c.cluster())["node_id"] == "a"

    asyncio.run(scenario())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerserve", *args], capture_output=True, text=True, timeout=120)


def test_cli_commands_with_json(agents: Any) -> None:
    a = agents("a", host="127.0.0.7")
    out = cli("predict", "half_plus_two", "--data", "[1.0, 2.0, 5.0]", "--agent", a.url, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"predictions": [2.5, 3.0, 4.5]}
    out = cli("endpoints", "half_plus_two", "--agent", a.url, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["node"] == "a"
    out = cli("endpoints", "--agent", a.url, "--json")
    assert [e["model"] for e in json.loads(out.stdout)] == ["half_plus_two"]
    out = cli("cluster", "--agent", a.url, "--json")
    assert json.loads(out.stdout)["members"][0]["node_id"] == "a"
    table = cli("cluster", "--agent", a.url)
    assert table.returncode == 0 and "alive" in table.stdout
    assert cli("endpoints", "resnet", "--agent", a.url).returncode == 2
    assert cli("predict", "half_plus_two", "--data", "{bad", "--agent", a.url).returncode == 2
    unreachable = cli("cluster", "--agent", "http://127.0.0.7:1", "--timeout", "1")
    assert unreachable.returncode == 1 and "no agent answered" in unreachable.stderr
