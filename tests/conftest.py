"""Session-wide fixtures: a private Docker Engine for the tests that exercise containers, and the leak guard
(tests/child_guard.py: a test that leaves a child process running fails, and the child is reaped); the packages'
bytecode, written once before the tests start the processes that import them."""

from __future__ import annotations

import compileall
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from scripts.dockerd import DockerUnavailable, PrivateDockerd, available, private_dockerd
from tests.child_guard import pytest_configure  # noqa: F401 - registers the leak guard for every test

# CI runs the property tests on a fixed sequence of examples, so a submission's verdict is reproducible;
# anywhere else hypothesis explores new examples every run (and stores any failure it finds). No per-example
# deadline in CI: on a shared 2-core machine an example held off the CPU for 200 ms is not a failure (speed targets
# live in bench/, never in a test's clock).
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


# pytest's own cache of the test modules' rewritten asserts (their __pycache__): not written where
# PYTHONDONTWRITEBYTECODE is set (the machine CI runs on), so every pytest process and xdist worker rewrote every test
# module's asserts again, ~70 % of collecting the unit tier (32 CPU-s a process here). The setting is this process's:
# the processes the tests start still keep the environment's.
sys.dont_write_bytecode = False

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "client", "coordinator_election", "peerserve", "solver")  # what a started agent or CLI imports


def pytest_sessionstart(session: pytest.Session) -> None:
    """The packages' bytecode (__pycache__), compiled once here. Where PYTHONDONTWRITEBYTECODE is set (the machine
    CI runs on) no process writes it, so every agent, model server and CLI that a test starts compiled the ~80 of
    the project's modules it imports from source: ~0.15 s of the ~1.1 s of CPU from an agent's exec to its first
    /health answer, again at each of the suite's hundreds of starts. Up to date: ~10 ms; a stale file is rewritten,
    and Python checks each file's source stamp anyway. Not on an xdist worker: the controller did it first."""
    if hasattr(session.config, "workerinput"):
        return
    for name in PACKAGES:
        compileall.compile_dir(REPO / name, quiet=1)


SERIAL_TIERS = ("cluster", "system")  # namespaces on one bridge, fixed addresses, booted boards: always one at a time


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects: ``-m serial`` / ``-m "not serial"`` see these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``serial`` every cluster and system test, and every test on the private Docker Engine (one bridge subnet,
    one engine at a time); service modules mark themselves where they need a core or an address to themselves."""
    for item in items:
        tier = item.path.parent.name
        if (
            tier in SERIAL_TIERS
            or item.get_closest_marker("docker")
            or "docker_engine" in getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[PrivateDockerd]:
    """A real dockerd on a private socket with the stand-in image built; skipped only where it cannot run.

    scripts/test.sh sets PEERSERVE_REQUIRE_DOCKER=1 when root, so in CI a missing engine fails the run.
    """
    reason = available()
    if reason:
        if os.environ.get("PEERSERVE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"a Docker Engine is required here but cannot run: {reason}")
        pytest.skip(f"no private Docker Engine: {reason}")
    try:
        with private_dockerd() as engine:
            yield engine
    except DockerUnavailable as exc:
        pytest.fail(str(exc))
