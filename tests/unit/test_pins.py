"""Re-admitting a re-imaged board: `peerserve pins` edits the pin file a running agent re-reads, under its lock."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity import AuthError, DamagedPinFile, Identity, Pins, edit_pin, read_pins
from peerserve.cli import main

OLD, NEW, THIEF = b"o" * 32, b"n" * 32, b"t" * 32


def test_a_forgotten_pin_readmits_a_new_key_in_the_running_agent(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path)
    agent.check("n2", OLD)
    with pytest.raises(AuthError) as info:
        agent.check("n2", NEW)  # re-imaged: refused
    assert info.value.status == 403
    assert edit_pin(path, "n2", None) == OLD
    agent.check("n2", NEW)  # the same Pins object, no restart
    assert read_pins(path) == {"n2": NEW}
    with pytest.raises(AuthError):
        agent.check("n2", OLD)  # and the new key is pinned in turn


def test_repinning_to_a_key_admits_that_key_only(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path)
    agent.check("n2", OLD)
    assert edit_pin(path, "n2", NEW) == OLD
    with pytest.raises(AuthError):
        agent.check("n2", THIEF)  # another holder of the token cannot take the id first
    agent.check("n2", NEW)
    with pytest.raises(AuthError):
        agent.check("n2", OLD)


def test_the_agent_pinning_another_node_keeps_the_operators_edit(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path)
    agent.check("n2", OLD)
    agent.check("n3", OLD)
    edit_pin(path, "n2", None)
    agent.check("n4", OLD)  # the agent writes the file again: it must not bring n2's old pin back
    assert read_pins(path) == {"n3": OLD, "n4": OLD}


def test_without_rereading_the_file_the_edit_would_not_reach_the_agent(tmp_path: Path) -> None:
    """The property switched off: a Pins that never re-reads still refuses the re-imaged board."""
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path)
    agent.check("n2", OLD)
    agent._refresh = lambda: None  # type: ignore[method-assign]
    edit_pin(path, "n2", None)
    with pytest.raises(AuthError):
        agent.check("n2", NEW)


def test_the_bound_counts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path, limit=2)
    agent.check("a", OLD)
    edit_pin(path, "b", NEW)
    with pytest.raises(AuthError, match="full"):
        agent.check("c", OLD)
    edit_pin(path, "b", None)
    agent.check("c", OLD)


@pytest.mark.parametrize(
    "damage", ['{"a": "' + "ab" * 16, "[1, 2]", '{"a": "zz"}', '{"a b": "' + "00" * 32 + '"}', "\xff"]
)
def test_a_damaged_pin_file_fails_closed_and_is_never_overwritten(tmp_path: Path, damage: str) -> None:
    """A truncated or badly edited pin file pins nobody new (an impostor of a node it held must not be pinned in
    its place) and is kept for the operator; moving it aside starts afresh, no restart."""
    path = tmp_path / "pins.json"
    path.write_text(damage, errors="surrogateescape")
    before = path.read_bytes()
    with pytest.raises(DamagedPinFile):
        read_pins(path)
    agent = Pins(path)
    with pytest.raises(AuthError) as info:
        agent.check("a", OLD)
    assert info.value.status == 403 and "damaged" in str(info.value)
    assert path.read_bytes() == before
    path.rename(tmp_path / "pins.json.damaged")
    agent.check("a", OLD)
    assert read_pins(path) == {"a": OLD}


def test_a_running_agent_keeps_the_pins_it_read_when_the_file_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "pins.json"
    agent = Pins(path)
    agent.check("a", OLD)
    path.write_text(path.read_text()[:10])  # torn (a write without fsync, a bad edit)
    agent.check("a", OLD)  # still pinned in memory
    with pytest.raises(AuthError, match="belongs to another key"):
        agent.check("a", NEW)
    with pytest.raises(DamagedPinFile):
        agent.check("b", NEW)


def test_the_cli_names_a_damaged_pin_file_and_how_to_start_afresh(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "peer").mkdir()
    (tmp_path / "peer" / "pins.json").write_text("{")
    for argv in (["pins", "list"], ["pins", "forget", "n1"]):
        assert main([*argv, "--data-dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert "damaged" in err and "pins.json.damaged" in err
    assert (tmp_path / "peer" / "pins.json").read_text() == "{"


def test_the_cli_lists_forgets_repins_and_prints_the_own_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = Identity("n2", "x" * 16, tmp_path / "n2")  # the re-imaged board's data dir
    path = tmp_path / "n1" / "peer" / "pins.json"
    Pins(path).check("n2", OLD)
    Pins(path).check("n3", OLD)
    data = ["--data-dir", str(tmp_path / "n1")]
    assert main(["pins", "list", "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out) == {"n2": OLD.hex(), "n3": OLD.hex()}
    assert main(["pins", "key", "--data-dir", str(tmp_path / "n2")]) == 0
    key = capsys.readouterr().out.strip()
    assert bytes.fromhex(key) == board.public_key
    assert main(["pins", "forget", "n2", "--key", key, *data]) == 0
    assert "was pinned to " + OLD.hex() in capsys.readouterr().out
    assert read_pins(path) == {"n2": board.public_key, "n3": OLD}
    assert main(["pins", "forget", "n3", *data]) == 0
    assert read_pins(path) == {"n2": board.public_key}


@pytest.mark.parametrize(
    "argv", [["forget", "n\n2"], ["forget", "n2", "--key", "abc"], ["forget", "n2", "--key", "z" * 64]]
)
def test_the_cli_refuses_bad_input_with_a_message(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "peer").mkdir()
    assert main(["pins", *argv, "--data-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err
    assert main(["pins", "list", "--data-dir", str(tmp_path / "missing")]) == 2


def test_a_passing_read_error_is_not_damage_and_the_next_check_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors when the operator's edit lands: the contact waits (503), the pins read before still
    count, and once reads work again the edit is seen (it was once taken for damage and ignored for good)."""
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path)
    agent.check("a", OLD)
    agent.check("b", OLD)
    edit_pin(path, "a", None)  # the operator forgets a (re-imaged with NEW)
    real = Path.read_bytes

    def emfile(self: Path) -> bytes:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(Path, "read_bytes", emfile)
    agent.check("b", OLD)  # pinned before: still admitted
    with pytest.raises(AuthError) as info:
        agent.check("c", NEW)
    assert info.value.status == 503
    monkeypatch.setattr(Path, "read_bytes", real)
    agent.check("a", NEW)  # the forget is seen
    agent.check("c", NEW)
    assert read_pins(path) == {"a": NEW, "b": OLD, "c": NEW}


@contextlib.contextmanager
def disk_full(folder: Path) -> Iterator[None]:
    """Within: every write of the pin file's temp file in ``folder`` fails with ENOSPC at its fsync, as a full data
    partition answers (delayed allocation). Before trust20a a symlink to /dev/full at the temp name did it; the temp
    file is now created O_EXCL|O_NOFOLLOW, so a link planted there is removed, never written through."""
    folder.mkdir(parents=True, exist_ok=True)
    real = os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == str(folder / "pins.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    os.fsync = full
    try:
        yield
    finally:
        os.fsync = real


def test_a_pin_that_cannot_be_written_is_not_made_and_the_contact_waits(tmp_path: Path) -> None:
    """Disk full at first contact: 503 (retry), nothing pinned in memory either (a pin in memory alone admitted
    the key until a restart, which then pinned whichever key came next), the pins on disk untouched."""
    path = tmp_path / "peer" / "pins.json"
    agent = Pins(path)
    agent.check("a", OLD)
    before = path.read_bytes()
    with disk_full(path.parent):
        agent.check("a", OLD)  # pinned before: still admitted, nothing to write
        for key in (NEW, NEW, THIEF):
            with pytest.raises(AuthError) as info:
                agent.check("n2", key)
            assert info.value.status == 503 and "cannot write its pin file" in str(info.value)
        assert path.read_bytes() == before and "n2" not in agent._pins
    agent.check("n2", NEW)  # space again (the failed write's temp file is replaced)
    assert read_pins(path) == {"a": OLD, "n2": NEW}
    with pytest.raises(AuthError, match="belongs to another key"):
        Pins(path).check("n2", THIEF)  # after a restart too


def test_a_full_disk_answers_503_on_the_peer_route_not_500(tmp_path: Path) -> None:
    """Through the peer plane (the route's AuthError handler): a signed request from a member met for the first
    time while the disk is full is 503 every time until the pin is written; then 200, and the id is pinned."""
    import asyncio

    import httpx

    from agent.node import NodeAgent
    from agent.peer_api import create_peer_app
    from agent.settings import load_settings
    from peerserve import wire

    token = "pins-disk-full-cluster-token-0123456789"
    member, impostor = Identity("m", token, tmp_path / "m"), Identity("m", token, tmp_path / "m-impostor")

    async def scenario() -> list[tuple[int, str]]:
        overrides = {"node_id": "f", "data_dir": str(tmp_path / "f"), "cluster_token": token, "mdns": False}
        agent = NodeAgent(load_settings(env={}, overrides=overrides))
        assert agent.identity is not None
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_peer_app(agent, agent.identity)))

        async def get(sender: Identity) -> tuple[int, str]:
            signed = sender.sign_request("f", "GET", wire.ROUTE_STATE, b"", agent.clock())
            r = await http.get("http://f" + wire.ROUTE_STATE, headers=dict(signed.headers))
            return r.status_code, r.text

        try:
            with disk_full(tmp_path / "f" / "peer"):
                answers = [await get(member), await get(member), await get(impostor)]
            return [*answers, await get(member), await get(impostor)]
        finally:
            await http.aclose()
            await agent.stop()

    answers = asyncio.run(scenario())
    assert [status for status, _ in answers] == [503, 503, 503, 200, 403]
    assert "cannot write its pin file" in answers[0][1]
    assert read_pins(tmp_path / "f" / "peer" / "pins.json") == {"m": member.public_key}
