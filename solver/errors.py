"""Errors raised by the placement solver.

    SolverError                  base of everything below
    ├── SnapshotError            the snapshot is malformed (our caller's input); names the field
    └── SolverUnavailableError   Ipopt or HiGHS is not installed; names the install step

A placement that cannot serve some request is not an error: the plan lists it under ``rejected``.
"""

from __future__ import annotations

INSTALL_HINT = (
    "run `bash scripts/install-solver.sh` (pip installs pyomo, cyipopt-wheels, highspy, scipy and "
    "builds pynumero's ASL library)"
)


class SolverError(Exception):
    """Base class of the solver's errors."""


class SnapshotError(SolverError, ValueError):
    """The snapshot is malformed; ``field`` is a JSON-path-like name of the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SolverUnavailableError(SolverError, RuntimeError):
    """A numerical solver this method needs is not installed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not available: {INSTALL_HINT}")
        self.what = what
