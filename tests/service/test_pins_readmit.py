"""A re-imaged board (new node key, same id) re-admitted by a real running agent with `peerserve pins`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.peer_tools import TestPeer
from tests.service.conftest import TOKEN


def pins(*argv: str) -> str:
    out = subprocess.run([sys.executable, "-m", "peerserve", "pins", *argv], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    return out.stdout.strip()


def test_a_reimaged_board_is_refused_until_pinned_then_admitted_without_restart(agents: Any, tmp_path: Path) -> None:
    a = agents("a", "--no-discovery")
    data = ["--data-dir", str(a.data_dir)]
    assert a.put_desired(2, {}).status_code == 200  # "lead" (conftest's identity) is pinned now
    reimaged = TestPeer("lead", TOKEN, tmp_path / "lead-reimaged")  # same id, wiped data dir: new key
    assert reimaged.put_desired("a", a.peer_url, 3, {}).status_code == 403
    new_key = pins("key", "--data-dir", str(tmp_path / "lead-reimaged"))
    assert "lead" in pins("list", *data)
    pins("forget", "lead", "--key", new_key, *data)
    thief = TestPeer("lead", TOKEN, tmp_path / "thief")  # holds the token, but not the key the operator pinned
    assert thief.put_desired("a", a.peer_url, 3, {}).status_code == 403
    assert reimaged.put_desired("a", a.peer_url, 3, {}).status_code == 200  # same agent process, no restart
    assert a.put_desired(4, {}).status_code == 403  # the old key is refused now
    assert a.get("/health").json()["status"] in ("ok", "degraded")
