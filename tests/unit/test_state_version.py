"""The SWIM state version across restarts (agent.discovery.state_version): it rises, also after the wall clock
was stepped back, so members take a restarted node's state; a damaged or missing file is logged, never a crash."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from agent.discovery import state_version
from agent.discovery import swim as sw
from agent.discovery.state_version import MAX_VERSION, RESERVE, VersionFloor
from agent.discovery.swim_io import VERSION_CHECK_S, SwimDriver
from agent.identity import Identity
from agent.peer_client import PeerClient
from peerserve.wire import PeerState
from tests.unit.swim_sim import state_of, url_of

TOKEN = "unit-cluster-token-0123456789"
T = 1_800_000_000.0
IDENT = Identity("n", TOKEN, None)


class Node:
    """Node n's real driver on wall clock ``wall``, its state changed by the test (``serve``)."""

    def __init__(self, wall: float, version_file: Path | None) -> None:
        self.own = sw.Swim("n", url_of(2), sw.SwimConfig(), random.Random(0))
        self.state: PeerState = state_of(self.own)
        self.now = 0.0
        self.driver = SwimDriver("n", url_of(2), PeerClient(IDENT, lambda url: None), sw.SwimConfig(),
                                 lambda: self.state, lambda s, u: s, lambda t: None, wall=lambda: wall,
                                 version_file=version_file)  # fmt: skip
        self.driver._refresh_own(self.now)  # the first look: nothing announced yet

    def serve(self, model: str, url: str) -> None:
        """A serving fact changes: the driver announces a new version at its next look."""
        self.state = replace(self.state, endpoints={**self.state.endpoints, model: (url,)})
        self.now += VERSION_CHECK_S
        self.driver._refresh_own(self.now)

    def answer(self) -> PeerState:
        return self.driver.stamp(self.state)


def held_by_b(before: PeerState, after: PeerState) -> PeerState:
    """What member b holds of n once it fetched ``after``, having held ``before``."""
    b = sw.Swim("b", url_of(1), sw.SwimConfig(), random.Random(1))
    b.admitted("n", url_of(2), "127.0.0.4", before, 0.0)
    b.state_fetched("n", after, 5.0)
    return b.records["n"].state


@pytest.mark.parametrize("saved", [True, False])
def test_a_restart_after_a_step_back_announces_a_higher_version(tmp_path: Path, saved: bool) -> None:
    """review16a F3: n started while its clock read +1 h and served resnet; the clock is corrected, n restarts and
    serves nothing. Seeded from the wall clock alone (no file: the rule before) its version was lower and b kept
    the dead process's endpoint; with the saved ceiling it is higher and b takes the new state."""
    path = tmp_path / state_version.FILE_NAME if saved else None
    first = Node(T + 3600, path)
    first.serve("resnet", "http://127.0.0.4:9000")
    before = first.answer()
    assert before.version == int((T + 3600) * 1000) + 1
    after = Node(T + 600, path).answer()
    held = held_by_b(before, after)
    if saved:
        assert after.version == before.version + RESERVE  # the ceiling the first run saved, + 1
        assert held == after and dict(held.endpoints) == {}
    else:
        assert after.version < before.version
        assert dict(held.endpoints) == {"resnet": ("http://127.0.0.4:9000",)}  # the stale state kept


def test_the_ceiling_is_saved_before_a_version_past_it_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every version announced is covered by the file at the moment it is announced (a crash right after cannot
    lose it), with one write per RESERVE changes, not one per change."""
    monkeypatch.setattr(state_version, "RESERVE", 3)
    path = tmp_path / state_version.FILE_NAME
    writes: list[int] = []
    save = state_version.save
    monkeypatch.setattr(state_version, "save", lambda p, c: writes.append(c) or save(p, c))
    node = Node(T, path)
    for i in range(10):
        node.serve(f"m{i}", f"http://127.0.0.4:{9000 + i}")
        assert json.loads(path.read_text())["ceiling"] >= node.answer().version
    assert node.answer().version == int(T * 1000) + 10
    assert len(writes) == 3  # at start (ceiling +3), after the 4th and the 8th change
    assert Node(T - 7200, path).answer().version > node.answer().version  # two hours back: still higher


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"ceiling": -1}', b'{"ceiling": true}', b'{"ceiling": 1.5e12}',
     json.dumps({"ceiling": MAX_VERSION + 1}).encode(), b'{"ceiling": 1}' + b" " * 300],
)  # fmt: skip
def test_a_damaged_file_is_a_clear_log_line_and_the_wall_clock(
    tmp_path: Path, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / state_version.FILE_NAME
    path.write_bytes(body)
    with caplog.at_level(logging.WARNING, logger="agent.discovery.state_version"):
        node = Node(T, path)
    assert node.answer().version == int(T * 1000)
    assert any("ignoring unreadable" in r.message and "wall clock alone" in r.message for r in caplog.records)
    assert json.loads(path.read_text())["ceiling"] == int(T * 1000) + RESERVE  # replaced by a sound one


def test_an_unwritable_data_dir_is_logged_and_the_node_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing" / state_version.FILE_NAME  # its folder does not exist: every write fails
    with caplog.at_level(logging.WARNING, logger="agent.discovery.state_version"):
        node = Node(T, path)
        node.serve("resnet", "http://127.0.0.4:9000")
    assert node.answer().version == int(T * 1000) + 1
    assert sum("cannot save" in r.message for r in caplog.records) == 1  # tried again RESERVE changes later


def test_the_seed_is_bounded() -> None:
    assert state_version.seed(5, None) == 5
    assert state_version.seed(5, 9) == 10
    assert state_version.seed(50, 9) == 50
    floor = VersionFloor(None, 7)
    floor.reserve(MAX_VERSION + 5)  # no file: nothing to save, nothing raised
    assert floor.first == 7 and floor.ceiling is None


def recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each os.fsync call from here on synced, in order: "file" or "folder" (it still syncs)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_the_ceiling_is_durable_the_folder_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review16c F1: the rename reaches the disk only with the folder's next journal commit unless the folder is
    fsynced; a power cut before it left the previous ceiling (two boots announcing the same version)."""
    synced = recorded_fsyncs(monkeypatch)  # (agent/durable.py writes the file)
    path = tmp_path / state_version.FILE_NAME
    assert state_version.save(path, 1234)
    assert synced == ["file", "folder"] and json.loads(path.read_text()) == {"ceiling": 1234}
