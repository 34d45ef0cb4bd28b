"""The start-up check of uvicorn's private internals the client port's protocol hooks (agent/uvicorn_hooks.py).

The installed uvicorn passes; classes built from it with one hook taken away or changed (as a later uvicorn might
ship them) are caught, each naming what is missing, and the agent refuses to start naming the pinned version."""

from __future__ import annotations

from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from agent import uvicorn_hooks
from agent.uvicorn_hooks import PINNED_UVICORN, UvicornHooksError, check_uvicorn_hooks, missing_hooks


def _without(cls: type, name: str, **replaced: Any) -> type:
    """``cls`` rebuilt (not a subclass: nothing inherited from it) without ``name``, with ``replaced`` in."""
    members = {k: v for k, v in vars(cls).items() if k not in (name, "__dict__", "__weakref__")}
    return type(cls.__name__, cls.__bases__, {**members, **replaced})


def test_the_installed_uvicorn_has_every_hook() -> None:
    assert missing_hooks() == []
    check_uvicorn_hooks()


def test_a_missing_should_upgrade_is_caught_and_the_error_names_the_pinned_version() -> None:
    old = _without(H11Protocol, "_should_upgrade")
    assert "H11Protocol._should_upgrade is missing" in missing_hooks(old)
    with pytest.raises(UvicornHooksError, match=f"uvicorn=={PINNED_UVICORN}.*install that version"):
        check_uvicorn_hooks(old)


def test_a_handle_events_that_no_longer_asks_should_upgrade_first_is_caught() -> None:
    def handle_events(self: Any) -> None:  # checks the cap and never asks _should_upgrade
        if self.limit_concurrency is not None and len(self.connections) + len(self.tasks) > 0:
            self.tasks.add(None)
            self.tasks.discard(None)

    problems = missing_hooks(_without(H11Protocol, "handle_events", handle_events=handle_events))
    assert problems == ["H11Protocol.handle_events no longer uses self._should_upgrade()"]


def test_a_changed_signature_is_caught() -> None:
    def connection_made(self: Any, transport: Any, extra: Any = None) -> None:
        return None

    problems = missing_hooks(_without(H11Protocol, "connection_made", connection_made=connection_made))
    assert problems == ["H11Protocol.connection_made takes (self, transport, extra), not (self, transport)"]


def test_connection_and_task_sets_no_longer_the_servers_are_caught() -> None:
    def __init__(self: Any, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        H11Protocol.__init__(self, config, server_state, app_state, _loop)
        self.connections, self.tasks = set(), set()  # (as if uvicorn kept them elsewhere)

    problems = missing_hooks(_without(H11Protocol, "__init__", __init__=__init__))
    assert problems == [
        "H11Protocol.connections is not the server's connection set",
        "H11Protocol.tasks is not the server's task set",
    ]


def test_a_request_cycle_or_flow_control_missing_a_field_is_caught() -> None:
    def cycle_init(self: Any, scope: Any, message_event: Any) -> None:
        self.scope, self.message_event, self.disconnected = scope, message_event, False
        self.response_started = self.response_complete = False  # and no waiting_for_100_continue

    def flow_init(self: Any, transport: Any) -> None:
        self._transport, self.reading_paused, self.write_paused = transport, False, False  # renamed read_paused

    problems = missing_hooks(cycle=_without(RequestResponseCycle, "__init__", __init__=cycle_init))
    assert problems == ["RequestResponseCycle.waiting_for_100_continue is missing"]
    problems = missing_hooks(flow=_without(FlowControl, "resume_reading", __init__=flow_init))
    assert problems == ["FlowControl.read_paused is missing", "FlowControl.resume_reading is missing"]


def test_the_agent_refuses_to_start_on_a_uvicorn_without_the_hooks(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from peerserve.cli import main

    def lacking() -> None:
        check_uvicorn_hooks(_without(H11Protocol, "_should_upgrade"))

    monkeypatch.setattr(uvicorn_hooks, "checked_once", lacking)
    assert main(["agent", "--data-dir", str(tmp_path), "--no-discovery"]) == 2
    err = capsys.readouterr().err
    assert "H11Protocol._should_upgrade is missing" in err and f"uvicorn=={PINNED_UVICORN}" in err
