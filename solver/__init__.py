"""Placement: snapshot in, plan out (Pyomo + Ipopt, HiGHS MILP reference, baselines, simulation)."""

import os
import sys

# scripts/install-solver.sh builds PyNumero's ASL library inside the environment; point Pyomo at it
# unless the user chose a location of their own.
_PYOMO_DIR = os.path.join(sys.prefix, "share", "pyomo")
if os.path.isdir(_PYOMO_DIR):
    os.environ.setdefault("PYOMO_CONFIG_DIR", _PYOMO_DIR)

from solver.errors import SnapshotError, SolverError, SolverUnavailableError  # noqa: E402
from solver.modes import EvictionPolicy  # noqa: E402
from solver.plan import Action, Plan, Rejection  # noqa: E402
from solver.problem import Mode  # noqa: E402
from solver.snapshot import InstanceUsage, Model, Node, Request, Snapshot  # noqa: E402

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
