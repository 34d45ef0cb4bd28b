"""A follower imports nothing only the leader's solver or the CLI's other commands need (real agents, loopback).

The follower's modules are read from the running agent itself: a ``sitecustomize`` put first on its
``PYTHONPATH`` writes ``sys.modules`` to a file when the agent gets SIGUSR1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.service.conftest import free_port
from tests.waiting import wait_for

# What only the leader's solver worker (numpy, SciPy, Pyomo, Ipopt, HiGHS), the solver's own commands or
# the client library use: ~20 MB of a follower's RSS when imported (README, "Agent memory and CPU").
LEADER_ONLY = ("numpy", "scipy", "pyomo", "cyipopt", "highspy", "solver", "client")

DUMP_MODULES = """\
import json, os, signal, sys

def _dump(*_args: object) -> None:
    path = os.environ["PEERSERVE_TEST_MODULES"]
    with open(path + ".tmp", "w") as out:
        json.dump(sorted(sys.modules), out)
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR1, _dump)
"""


def heavy(modules: list[str]) -> list[str]:
    """The leader-only packages among ``modules``."""
    return sorted({m.split(".")[0] for m in modules} & set(LEADER_ONLY))


def follower_env(tmp_path: Path) -> dict[str, str]:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DUMP_MODULES)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    return {"PEERSERVE_MDNS": "false", "PYTHONPATH": path, "PEERSERVE_TEST_MODULES": str(tmp_path / "modules.json")}


def test_a_follower_imports_no_solver_and_no_client(agents: Any, tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    a = agents("a", env={"PEERSERVE_MDNS": "false"}, port=pa)
    wait_for(lambda: a.get("/cluster").json().get("leader") == "a", 15)
    b = agents("b", "--seeds", f"http://127.0.0.1:{pa}", env=follower_env(tmp_path), port=pb)
    wait_for(lambda: b.get("/cluster").json().get("leader") == "a", 15)
    for _ in range(20):  # it serves clients meanwhile: the serving path is imported too
        assert b.get("/services").status_code == 200
    assert b.get("/metrics").status_code == 200
    dump = tmp_path / "modules.json"
    b.proc.send_signal(signal.SIGUSR1)
    wait_for(dump.exists, 10)
    modules = json.loads(dump.read_text())
    assert "agent.node" in modules and "agent.serving.routes" in modules  # the dump is the agent's own
    assert heavy(modules) == [], f"a follower imported leader-only packages: {heavy(modules)}"


def test_the_check_sees_an_eager_import(tmp_path: Path) -> None:
    """The same check fails when the CLI registers every command for the agent (the lazy import undone)."""
    env = {**os.environ, **follower_env(tmp_path)}
    # build_parser(): every part, what `peerserve agent` used to build
    code = f"import os; import peerserve.cli as c; c.build_parser(); os.kill(os.getpid(), {signal.SIGUSR1:d})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    modules = json.loads((tmp_path / "modules.json").read_text())
    # every command's parser imports the solver's and the client's packages (numpy no longer: the solver package
    # loads its modules on first use since session 19, so the check sees the packages themselves)
    assert "solver" in heavy(modules) and "client" in heavy(modules)
