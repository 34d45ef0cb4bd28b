"""The `peerserve` console script: one parser, subcommands registered by each part.

Conventions shared by every subcommand: `--help` explains, `--json` prints machine-readable output,
exit codes are 0 (ok), 1 (the operation failed), 2 (bad usage or bad input).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from peerserve import __version__
from peerserve.errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
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
    from agent import cli as agent_cli
    from agent import pins_cli
    from client import cli as client_cli
    from peerserve import chaos, demo
    from solver import cli as solver_cli

    agent_cli.register(commands)
    pins_cli.register(commands)
    client_cli.register(commands)
    solver_cli.register(commands)
    demo.register(commands)
    chaos.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
