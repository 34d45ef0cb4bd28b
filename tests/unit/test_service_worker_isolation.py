"""The service tier's tests on pytest-xdist workers (scripts/test.sh): each worker listens on ports of its own and
runs a cluster of its own, so agents of two tests running at once neither take each other's port nor join each
other's cluster."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import listen_ports

ROOT = Path(__file__).resolve().parents[2]
EPHEMERAL_FIRST = 32768  # Linux's ip_local_port_range starts here: outgoing connections take ports from it on


@pytest.mark.parametrize("workers", [2, 3, 4, 7])
def test_workers_get_disjoint_ranges_below_the_ephemeral_ones(workers: int) -> None:
    ranges = [listen_ports(f"gw{i}", workers) for i in range(workers)]
    for low, high in ranges:
        assert 20000 <= low < high < EPHEMERAL_FIRST
        assert high - low >= 12000 // workers - 1  # each keeps its share: a random pick rarely meets a taken port
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high < low  # no port in two workers' ranges


def test_a_single_worker_keeps_the_whole_range_and_a_plain_run_has_one_apart() -> None:
    assert listen_ports("gw0", 1) == (20000, 32000)
    for worker in ("", "master"):  # scripts/test.sh's serial tests, one process beside the service tier's workers
        low, high = listen_ports(worker, 2)
        assert (low, high) == (12000, 19999) and high - low >= 6000 - 1
        assert all(high < w_low for w_low, _ in (listen_ports(f"gw{i}", 2) for i in range(2)))


def conftest_values(*envs: dict[str, str]) -> list[tuple[str, str]]:
    """The token and port range tests/service/conftest.py settles on under each of ``envs``, in a fresh interpreter:
    the conftest module is executed anew under each (a new module object: its top level, where TOKEN and
    LISTEN_PORTS are read from the environment, runs again with only that env's PYTEST_XDIST_* variables set). One
    interpreter for all of them: its imports (httpx, fastapi, the agent) take ~2.5 s a start; three starts were all of
    this test's 7.6 s on the 2-core CI machine."""
    code = (
        "import importlib, json, os, sys\n"
        "for env in json.loads(sys.argv[1]):\n"
        "    for k in [k for k in os.environ if k.startswith('PYTEST_XDIST')]:\n"
        "        del os.environ[k]\n"
        "    os.environ.update(env)\n"
        "    sys.modules.pop('tests.service.conftest', None)\n"
        "    conftest = importlib.import_module('tests.service.conftest')\n"
        "    print(conftest.TOKEN); print(conftest.LISTEN_PORTS)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    argv = [sys.executable, "-c", code, json.dumps(envs)]
    out = subprocess.run(argv, cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    lines = out.stdout.split("\n")
    return [(lines[2 * i], lines[2 * i + 1]) for i in range(len(envs))]


def test_each_worker_is_a_cluster_of_its_own_and_a_plain_run_keeps_the_token() -> None:
    plain, gw0, gw1 = conftest_values(
        {},
        {"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"},
        {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"},
    )
    assert plain == ("test-cluster-token-0123456789", "(12000, 19999)")
    assert len({plain[0], gw0[0], gw1[0]}) == 3  # agents of two workers are strangers to each other
    assert gw0[1] == "(20000, 25999)" and gw1[1] == "(26000, 31999)"
