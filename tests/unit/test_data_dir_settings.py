"""A relative data directory is made absolute when the settings load (review18b F1): tritonserver runs in
``DATA_DIR/triton`` with paths under DATA_DIR on its command line, and every part must see the same directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.runtime.process import ProcessRuntime
from agent.settings import Settings


def test_a_relative_data_dir_is_made_absolute_once_where_the_agent_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings(node_id="n", host="127.0.0.1", data_dir="state/../state/x")
    assert s.data_dir == str(tmp_path / "state" / "x")
    monkeypatch.chdir("/")  # the agent's working directory changes later: the settings stay where they were
    assert s.replace(port=9000).data_dir == str(tmp_path / "state" / "x")
    assert Settings(node_id="n", host="127.0.0.1", data_dir="/abs/dir").data_dir == "/abs/dir"


def test_the_process_runtime_keeps_an_absolute_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runtime = ProcessRuntime("127.0.0.1", Path("data"))
    assert runtime.log_dir == tmp_path / "data" / "logs" and runtime.log_dir.is_dir()
    assert runtime.state_file.is_absolute() and os.path.isabs(runtime.log_dir.parent / "triton")
