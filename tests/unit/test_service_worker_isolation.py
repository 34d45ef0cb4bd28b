"""The service tier's tests on pytest-xdist workers (scripts/test.sh): each worker listens on ports of its own and
runs a cluster of its own, so agents of two tests running at once neither take each other's port nor join each
other's cluster."""

from __future__ import annotations

import itertools
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


def test_a_plain_run_and_a_single_worker_keep_the_whole_range() -> None:
    assert listen_ports("", 1) == (20000, 32000)
    assert listen_ports("gw0", 1) == (20000, 32000)
    assert listen_ports("master", 2) == (20000, 32000)


def conftest_values(env: dict[str, str]) -> tuple[str, str]:
    """The token and port range tests/service/conftest.py settles on in a fresh interpreter with ``env``."""
    code = "from tests.service.conftest import LISTEN_PORTS, TOKEN; print(TOKEN); print(LISTEN_PORTS)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    token, ports = out.stdout.split("\n")[:2]
    return token, ports


def test_each_worker_is_a_cluster_of_its_own_and_a_plain_run_keeps_the_token() -> None:
    plain = conftest_values({})
    gw0 = conftest_values({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"})
    gw1 = conftest_values({"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"})
    assert plain == ("test-cluster-token-0123456789", "(20000, 32000)")
    assert len({plain[0], gw0[0], gw1[0]}) == 3  # agents of two workers are strangers to each other
    assert gw0[1] == "(20000, 25999)" and gw1[1] == "(26000, 31999)"
