"""agent/durable.py: the temporary file of every durable write is created anew (O_CREAT|O_EXCL|O_NOFOLLOW, 0600),
never opened through a link planted at its name; a crash's leftover is unlinked and the create tried once more."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import identity, known_peers, operator_ca
from agent.discovery import state_version
from agent.durable import unique_tmp, write_atomic, write_synced


def _plant(tmp: Path, victim: Path) -> None:
    victim.write_bytes(b"the victim's own bytes")
    tmp.symlink_to(victim)


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    """Before: ``open(tmp, "wb")`` followed the link and wrote (and fsynced) the new state into its target, e.g. a
    file of another user's that the agent may write, and the rename then moved the link into place."""
    path, victim = tmp_path / "state.json", tmp_path / "victim"
    _plant(path.with_name(path.name + ".tmp"), victim)
    st = write_atomic(path, b"new state")
    assert victim.read_bytes() == b"the victim's own bytes"
    assert not path.is_symlink() and path.read_bytes() == b"new state"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and st.st_ino == os.stat(path).st_ino
    assert not path.with_name(path.name + ".tmp").exists()


def test_a_crashs_leftover_temporary_file_is_replaced_not_written_into(tmp_path: Path) -> None:
    tmp = unique_tmp(tmp_path / "revoked.synced.json")
    tmp.write_bytes(b"a torn write from before a crash, longer than the new one")
    other = tmp_path / "hard-link"
    os.link(tmp, other)  # whoever holds the old inode (a link, an open file) never sees the new bytes
    st = write_synced(tmp, b"whole")
    assert tmp.read_bytes() == b"whole" and other.read_bytes().startswith(b"a torn write")
    assert st.st_ino == os.stat(tmp).st_ino != os.stat(other).st_ino and stat.S_IMODE(st.st_mode) == 0o600


def test_something_that_cannot_be_unlinked_at_the_temporary_name_is_an_oserror(tmp_path: Path) -> None:
    tmp = tmp_path / "x.tmp"
    tmp.mkdir()
    (tmp / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        write_synced(tmp, b"data")
    assert (tmp / "inside").read_bytes() == b"kept"


CALLERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], None]]] = {
    # name: (the file it writes in the folder, the write)
    "known peers": (lambda d: d / known_peers.FILE_NAME,
                    lambda d: known_peers.save(d, [known_peers.KnownPeer("b", "https://10.0.0.2:8401", 1.0)])),
    "state version": (lambda d: d / state_version.FILE_NAME,
                      lambda d: state_version.save(d / state_version.FILE_NAME, 123)),
    "pins": (lambda d: d / "pins.json", lambda d: identity._save_pins(d / "pins.json", {"b": bytes(32)})),
    "pin cards": (lambda d: d / "pin-cards.json", lambda d: operator_ca._save_quietly(d / "pin-cards.json", b"{}")),
}  # fmt: skip


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_no_caller_writes_through_a_link_at_its_temporary_name(tmp_path: Path, caller: str) -> None:
    target, write = CALLERS[caller]
    path = target(tmp_path)
    tmps = {path.with_suffix(".tmp"), path.with_name(path.name + ".tmp")}  # the names the callers use
    victims = []
    for i, tmp in enumerate(sorted(tmps)):
        victims.append(tmp_path / f"victim{i}")
        _plant(tmp, victims[-1])
    write(tmp_path)
    assert all(v.read_bytes() == b"the victim's own bytes" for v in victims)
    assert path.exists() and not path.is_symlink() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
