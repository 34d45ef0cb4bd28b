"""The `peerserve` console script: one parser, subcommands registered by each part.

Conventions shared by every subcommand: `--help` explains, `--json` prints machine-readable output,
exit codes are 0 (ok), 1 (the operation failed), 2 (bad usage or bad input).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from peerserve import __version__
from peerserve.errors import UsageError, printable

__all__ = ["UsageError", "build_parser", "main"]


# Each part registers its subcommands; `peerserve --help` lists them in this order. The agent's own
# commands need only the first three: `peerserve agent` builds a parser of those alone, so a running agent
# never imports the solver (numpy), the client library or the demo (~20 MB of a follower's RSS, README).
PARTS = ("agent.cli", "agent.pins_cli", "agent.ca_cli", "client.cli", "solver.cli", "peerserve.demo", "peerserve.chaos")
AGENT_PARTS = PARTS[:3]
# The commands each part registers, so that a part whose dependencies are not installed still lists its
# commands, each answering with what to install (tests/unit/test_cli_parts.py keeps this table true).
PART_COMMANDS = {
    "agent.cli": ("agent", "stats-token", "model-server"),
    "agent.pins_cli": ("pins",),
    "agent.ca_cli": ("ca", "card"),
    "client.cli": ("endpoints", "predict", "cluster"),
    "solver.cli": ("solve", "simulate"),
    "peerserve.demo": ("demo",),
    "peerserve.chaos": ("chaos",),
}
# The extra (pyproject.toml) that installs a missing top-level module; an agent-only install has no numpy.
EXTRA_OF = {
    **dict.fromkeys(("numpy", "scipy", "pyomo", "cyipopt", "highspy", "threadpoolctl", "tqdm", "matplotlib"), "solver"),
    **dict.fromkeys(
        ("fastapi", "uvicorn", "httptools", "pydantic", "psutil", "docker", "cryptography", "prometheus_client"),
        "agent",
    ),
    **dict.fromkeys(("sklearn", "tritonclient"), "serving"),
}


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
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an install without this part's extra: its commands say what to add
            _register_missing(commands, PART_COMMANDS.get(name, ()), exc)
            continue
        module.register(commands)
    return parser, commands.choices


def missing_message(command: str, exc: ImportError) -> str:
    """What to install for ``command``, whose import of a module failed with ``exc``."""
    module = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    what = f"pip install 'peerserve[{extra}]'" if extra else "install the package that provides it"
    return f"`peerserve {command}` needs the Python module {module or str(exc)!r}, not installed here: {what}"


def _register_missing(commands: Any, names: Sequence[str], exc: ImportError) -> None:
    """Register ``names`` as commands that print what to install (in --help too) and exit 1."""
    for name in names:
        message = missing_message(name, exc)
        p = commands.add_parser(name, help=f"(unavailable) {message}", description=message, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(handler=functools.partial(_unavailable, message))


def _unavailable(message: str, args: argparse.Namespace) -> int:
    """The handler of a command whose part cannot be imported: the message; exit 0 for --help, else 1."""
    if {"-h", "--help"} & set(args.args):
        print(message)
        return 0
    print(f"peerserve: error: {message}", file=sys.stderr)
    return 1


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
    except UsageError as exc:  # it may quote an agent's error answer (client/cli.py): printable, review27a M1
        print(f"peerserve: error: {printable(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a dependency the command imports when it runs (uvicorn for `agent`)
        command = next((a for a in argv if not a.startswith("-")), "")
        print(f"peerserve: error: {missing_message(command, exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
