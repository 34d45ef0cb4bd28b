"""The `peerserve` console script: one parser, subcommands registered by each part.

Conventions shared by every subcommand: `--help` explains, `--json` prints machine-readable output,
exit codes are 0 (ok), 1 (the operation failed), 2 (bad usage or bad input).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from peerserve import __version__
from peerserve.errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]


# Each part registers its subcommands; `peerserve --help` lists them in this order. The agent's own
# commands need only the first two: `peerserve agent` builds a parser of those alone, so a running agent
# never imports the solver (numpy), the client library or the demo (~20 MB of a follower's RSS, README).
PARTS = ("agent.cli", "agent.pins_cli", "client.cli", "solver.cli", "peerserve.demo", "peerserve.chaos")
AGENT_PARTS = PARTS[:2]


def build_parser(parts: Sequence[str] = PARTS) -> argparse.ArgumentParser:
    """The console script's parser with the subcommands of ``parts`` (modules with a ``register``)."""
    return _build(parts)[0]


def _build(parts: Sequence[str]) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="peerserve",
        description=(
            "Decentralised ML model serving on edge boards: agents discover each other over mDNS, elect a "
            "leader, and the leader places TensorFlow Serving models with a Pyomo/Ipopt optimisation."
        ),
        epilog="Run `peerserve COMMAND --help` for its options. Exit codes: 0 ok, 1 failure, 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"peerserve {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in parts:
        importlib.import_module(name).register(commands)
    return parser, commands.choices


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The agent's parts alone when ``argv`` names one of their commands, else every part."""
    command = next((a for a in argv if not a.startswith("-")), None)
    light, choices = _build(AGENT_PARTS)
    return light if command in choices else build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = parser_for(argv)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args))
    except UsageError as exc:
        print(f"peerserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
