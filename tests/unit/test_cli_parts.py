"""The console script builds the agent's commands alone for `peerserve agent` and every command otherwise."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peerserve.cli import AGENT_PARTS, PART_COMMANDS, PARTS, build_parser, parser_for

ROOT = Path(__file__).resolve().parents[2]


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


def test_the_part_table_names_what_each_part_registers() -> None:
    """PART_COMMANDS is what a part's commands are listed as when it cannot be imported: it must stay true."""
    assert set(PART_COMMANDS) == set(PARTS)
    for part in PARTS:
        assert commands(build_parser([part])) == set(PART_COMMANDS[part])


# Runs the console script with ``BLOCKED`` top-level modules unimportable, as on an install without them.
WITHOUT = """\
import sys
BLOCKED = set(sys.argv[1].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Blocker())
from peerserve.cli import main

sys.exit(main(sys.argv[2:]))
"""


def without(blocked: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``peerserve ARGV`` in a fresh interpreter where the ``blocked`` modules cannot be imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", WITHOUT, blocked, *argv]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_an_install_without_numpy_lists_every_command_and_says_what_solve_needs() -> None:
    """The `agent` extra has no numpy: --help and the client's commands work, the solver's say what to install."""
    listing = without("numpy", "--help")
    assert listing.returncode == 0, listing.stderr
    assert "Traceback" not in listing.stderr
    assert {"endpoints", "predict", "cluster", "demo", "agent"} <= set(listing.stdout.split())
    assert "(unavailable)" in listing.stdout and "peerserve[solver]" in listing.stdout
    for argv in (["endpoints", "--help"], ["agent", "--help"], ["demo", "--help"], ["solve", "--help"]):
        shown = without("numpy", *argv)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, (argv, shown.stderr)
    for argv in (["solve", "--json", "snap.json"], ["simulate"]):
        used = without("numpy", *argv)
        assert used.returncode == 1, (argv, used.stderr)
        assert "Traceback" not in used.stderr
        assert f"`peerserve {argv[0]}` needs the Python module 'numpy'" in used.stderr
        assert "pip install 'peerserve[solver]'" in used.stderr


def test_the_agent_without_uvicorn_says_what_to_install() -> None:
    run = without("uvicorn", "agent", "--port", "1")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "needs the Python module 'uvicorn'" in run.stderr and "peerserve[agent]" in run.stderr


# Runs the console script and writes, as it exits, every module it imported (sys.modules; -X importtime misses the
# parts, which importlib.import_module loads) as stderr's last line.
LOADED = """\
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
from peerserve.cli import main

sys.exit(main(sys.argv[1:]))
"""


def imported(*argv: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``peerserve ARGV`` in a fresh interpreter: the run and every module it imported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", LOADED, *argv]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    return run, set(json.loads(run.stderr.splitlines()[-1]))


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["endpoints", "--help"], ["predict", "--help"], ["demo", "--help"], ["solve", "--help"],
     ["agent", "--help"], ["endpoints", "--agent", "http://127.0.0.1:9"]],
)  # fmt: skip
def test_the_client_commands_and_help_import_no_numpy_and_no_httpx(argv: list[str]) -> None:
    """suite19: every command line but the agent's registered solver.cli, whose import of the solver package brought
    numpy (solver.modes; ~85 ms of start-up) to `peerserve --help` and every client command. The solver's names now
    load on first use, and solver.cli looks numpy up without importing it. tidy20: the help imported httpx too
    (~0.3 s), through client/__init__.py (client.core, eagerly) and peerserve.demo's top-level import; the client
    package's names now load on first use as the solver's do, and the demo imports httpx where it asks an agent. An
    endpoint query to an agent that is not there (port 9 on loopback: refused) runs the client library through to its
    error, exit 1: the only one of these that needs httpx."""
    run, modules = imported(*argv)
    assert run.returncode == (1 if "--agent" in argv else 0), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    parts = {"peerserve.cli", "agent.cli"} if argv[0] == "agent" else {"peerserve.cli", "client.cli", "solver.cli"}
    assert parts <= modules
    assert not modules & {"numpy", "solver.modes", "solver.workload", "scipy"}
    if "--agent" in argv:
        assert {"client.core", "httpx"} <= modules and "no agent answered" in run.stderr
    else:
        assert not modules & {"httpx", "httpcore", "client.core", "client.ops"}, sorted(modules)


def test_the_client_package_still_gives_its_names() -> None:
    """``from client import Client`` and ``client.Client`` work as before the lazy load; an unknown name is an
    AttributeError; ``from client import *`` gives every name in ``__all__``."""
    import client
    from client.core import Client
    from client.errors import PeerserveError

    assert client.Client is Client and client.PeerserveError is PeerserveError
    names: dict[str, object] = {}
    exec("from client import *", names)  # the star import itself is what is checked
    assert set(client.__all__) <= names.keys()
    with pytest.raises(AttributeError):
        _ = client.no_such_name  # type: ignore[attr-defined]


def test_a_submodule_is_reached_from_the_package_and_dir_lists_the_lazy_names() -> None:
    """review20b L3: ``import client; client.errors.X`` worked while the package imported its submodules itself, and
    was an AttributeError once it loaded its names lazily (mypy passed it): an unknown name is now the submodule of
    that name where there is one. dir() lists the names not loaded yet. A fresh interpreter: in this one the
    submodules may be imported already, which sets them on the package."""
    code = (
        "import sys, client, solver\n"
        "assert 'client.errors' not in sys.modules and 'Client' in dir(client) and 'Snapshot' in dir(solver)\n"
        "assert client.errors.PeerserveError.__name__ == 'PeerserveError' and solver.plan.Plan is solver.Plan\n"
        "for package, name in ((client, 'no_such_name'), (client, '__wrapped__'), (solver, 'a.b')):\n"
        "    try:\n"
        "        getattr(package, name)\n"
        "    except AttributeError as exc:\n"
        "        assert repr(name) in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit(f'{name} gave no AttributeError')\n"
        "print('httpx' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "False\n", run.stderr


def test_the_solver_still_loads_its_names_on_use() -> None:
    """The package's names (solver/__init__.py) come from their modules when first used; an unknown one is an
    AttributeError, as before."""
    import solver
    from solver.modes import EvictionPolicy
    from solver.workload import MAX_REQUESTS, Workload

    assert solver.EvictionPolicy is EvictionPolicy and solver.Snapshot.__module__ == "solver.snapshot"
    assert Workload().check() is None and MAX_REQUESTS == 2_000_000
    with pytest.raises(AttributeError):
        _ = solver.no_such_name  # type: ignore[attr-defined]


def test_mypy_still_rejects_a_name_the_solver_package_lacks(tmp_path: Path) -> None:
    """The lazy ``__getattr__`` is hidden from mypy (``if not TYPE_CHECKING``): visible, it typed every attribute of
    ``solver`` as Any, and a misspelt name passed the type check (review19c F1). The real names still type-check."""
    api = pytest.importorskip("mypy.api")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nfollow_imports = silent\nignore_missing_imports = true\ncache_dir = {tmp_path}\n")
    program = tmp_path / "uses_solver.py"
    program.write_text(
        "import solver\nfrom solver import Plan, Snapshot, Snapshott\n"
        "plan: Plan | None = None\nsnapshot: Snapshot | None = None\nerror = solver.SolverEror\n"
    )
    out, err, status = api.run(["--config-file", str(config), str(program)])
    wrong = sorted(line.split(": error: ")[1] for line in out.splitlines() if ": error: " in line)
    assert status == 1, out + err
    assert len(wrong) == 2 and all(line.endswith("[attr-defined]") for line in wrong), out
    assert "Snapshott" in wrong[0] and "SolverEror" in wrong[1], out
