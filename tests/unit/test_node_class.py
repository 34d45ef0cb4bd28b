"""A node class is one pattern everywhere: settings, the peer plane's wire and the leader's snapshot.

One agent started with ``--node-class ""`` (or a member reporting it) once failed every queue-aware solve of the
cluster (the snapshot refuses an empty class: "0 rounds placed"), and a class over 64 characters made the node's
own state unparseable at its peers (never admitted, silently)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import placement
from agent.errors import ConfigError
from agent.settings import load_settings
from peerserve import wire

BAD = ["", " ", "a b", "x" * 65, "-lead", "jetson/nano", "nano\n", "ünï"]
GOOD = ["default", "nano", "orin-nx.16GB", "x" * 64, "9"]


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_node_class_is_refused_at_start_naming_the_key(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_NODE_CLASS": bad})
    assert err.value.key == "node_class"


@pytest.mark.parametrize("good", GOOD)
def test_every_good_node_class_starts_and_crosses_the_wire(good: str, tmp_path: Path) -> None:
    assert (
        load_settings(None, env={"PEERSERVE_DATA_DIR": str(tmp_path), "PEERSERVE_NODE_CLASS": good}).node_class == good
    )
    stats = {"node_id": "n1", "node_class": good, "compute": 1.0, "mem_available_mb": 1.0, "mem_total_mb": 2.0,
             "instances": []}  # fmt: skip
    assert wire.NodeStats.parse(stats).node_class == good
    assert placement.parse_node_report(stats, {"models": {}}).node_class == good


@pytest.mark.parametrize("bad", [*BAD, 7, None, ["nano"]])
def test_a_members_bad_node_class_fails_its_own_report_not_the_round(bad: object) -> None:
    """The wire refuses it; and the leader's parse (what the gather calls: a ValueError is that one node's
    GatherFailed) refuses it before it can reach the snapshot, where it would fail the whole solve."""
    stats = {"node_id": "n1", "node_class": bad, "compute": 1.0, "mem_available_mb": 1.0, "mem_total_mb": 2.0,
             "instances": []}  # fmt: skip
    with pytest.raises(wire.WireError):
        wire.NodeStats.parse(stats)
    with pytest.raises(ValueError):
        placement.parse_node_report(stats, {"models": {}})
