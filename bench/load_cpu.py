"""Where the machine's CPU went during a load-bench window: the bench's own clients, the agents, the
leader's solver worker, the model servers, and everything else on the machine (from /proc; Linux only).

``snapshot(groups)`` reads cumulative CPU seconds per group (a group is a list of PIDs; a process's
children that are in no group count with their parent's group under ``<group>+children``) and the
machine's busy seconds; ``rates(a, b)`` turns two snapshots into CPU-seconds per second.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds per group and of the whole machine (busy, all CPUs), at ``at`` (monotonic s)."""

    at: float
    groups: dict[str, float]
    machine_busy: float


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent PID, utime + stime in s) of ``pid``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                out.setdefault(st[0], []).append(int(entry.name))
    return out


def machine_busy_s() -> float:
    """All CPUs' non-idle seconds since boot (/proc/stat; idle and iowait excluded)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in first[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def snapshot(groups: Mapping[str, Sequence[int]], at: float) -> CpuSnapshot:
    """CPU seconds so far per group, with each group's other descendants under ``<group>+children``."""
    kids = _children()
    named = {pid for pids in groups.values() for pid in pids}
    out: dict[str, float] = {}
    for name, pids in groups.items():
        out[name] = sum(st[1] for pid in pids for st in [_stat(pid)] if st is not None)
        stack = [c for pid in pids for c in kids.get(pid, [])]
        extra = 0.0
        while stack:
            pid = stack.pop()
            if pid in named:
                continue
            st = _stat(pid)
            extra += st[1] if st is not None else 0.0
            stack += kids.get(pid, [])
        out[f"{name}+children"] = extra
    return CpuSnapshot(at, out, machine_busy_s())


def rates(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """CPU-seconds per second per group between two snapshots, with ``machine`` and ``other`` (the rest)."""
    span = max(b.at - a.at, 1e-9)
    out = {k: round(max(0.0, b.groups[k] - a.groups.get(k, 0.0)) / span, 3) for k in b.groups}
    out["machine"] = round((b.machine_busy - a.machine_busy) / span, 3)
    out["other"] = round(max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine")), 3)
    return out
