"""The console script builds the agent's commands alone for `peerserve agent` and every command otherwise."""

from __future__ import annotations

import argparse

import pytest

from peerserve.cli import AGENT_PARTS, PARTS, build_parser, parser_for


def commands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def test_the_agent_commands_get_the_agent_parts_alone() -> None:
    light = commands(build_parser(AGENT_PARTS))
    assert {"agent", "model-server", "stats-token", "pins"} <= light
    assert not light & {"solve", "simulate", "endpoints", "demo", "chaos"}
    for argv in (["agent", "--port", "1"], ["-v", "agent"], ["model-server", "--model", "xor_mlp"], ["pins"]):
        assert commands(parser_for(argv)) == light


@pytest.mark.parametrize("argv", [["solve", "x.json"], ["-vv", "simulate"], ["--version"], [], ["nonsense"]])
def test_every_other_command_line_gets_every_part(argv: list[str]) -> None:
    assert commands(parser_for(argv)) == commands(build_parser(PARTS)) >= {"agent", "solve", "demo", "endpoints"}


def test_an_unknown_command_is_still_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from peerserve.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
