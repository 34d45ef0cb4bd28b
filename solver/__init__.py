"""Placement: snapshot in, plan out (Pyomo + Ipopt, HiGHS MILP reference, baselines, simulation)."""

import os
import sys
from typing import TYPE_CHECKING

from peerserve import lazy

# scripts/install-solver.sh builds PyNumero's ASL library inside the environment; point Pyomo at it
# unless the user chose a location of their own.
_PYOMO_DIR = os.path.join(sys.prefix, "share", "pyomo")
if os.path.isdir(_PYOMO_DIR):
    os.environ.setdefault("PYOMO_CONFIG_DIR", _PYOMO_DIR)

# The package's names load on first use (PEP 562), not on `import solver`: `peerserve --help` and the client's
# commands import solver.cli to register `solve` and `simulate`, which imports this package first, and solver.modes
# brings numpy (~85 ms of start-up, and ~20 MB RSS, to every command that never solves).
_LAZY = {
    **dict.fromkeys(("SnapshotError", "SolverError", "SolverUnavailableError"), "solver.errors"),
    "EvictionPolicy": "solver.modes",
    **dict.fromkeys(("Action", "Plan", "Rejection"), "solver.plan"),
    "Mode": "solver.problem",
    **dict.fromkeys(("InstanceUsage", "Model", "Node", "Request", "Snapshot"), "solver.snapshot"),
}

if TYPE_CHECKING:
    from solver.errors import SnapshotError, SolverError, SolverUnavailableError
    from solver.modes import EvictionPolicy
    from solver.plan import Action, Plan, Rejection
    from solver.problem import Mode
    from solver.snapshot import InstanceUsage, Model, Node, Request, Snapshot


if not TYPE_CHECKING:  # hidden from mypy: visible, it types every attribute of ``solver`` as Any (review19c F1)
    __getattr__ = lazy.loader(__name__, _LAZY, globals())
    __dir__ = lazy.lister(_LAZY, globals())


__all__ = [
    "Action",
    "EvictionPolicy",
    "InstanceUsage",
    "Mode",
    "Model",
    "Node",
    "Plan",
    "Rejection",
    "Request",
    "Snapshot",
    "SnapshotError",
    "SolverError",
    "SolverUnavailableError",
    "solve",
]


def solve(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Lazy alias of solver.api.solve (keeps `import solver` light)."""
    from solver.api import solve as _solve

    return _solve(*args, **kwargs)
