"""Our SWIM state version's floor across restarts: versions must rise, whatever the wall clock did meanwhile.

Members replace the state they hold of a node only by one of a version at least as high (``Swim.state_fetched``),
and take the node's own word for the version it is at. The version used to start from the wall clock alone (in
ms): a node that started while its clock read ahead (an excursion, or a wrong RTC that NTP stepped back later) and
restarted after the correction seeded a LOWER version, and members kept the old process's endpoints and models
until the version climbed back, at +1 per change, in practice until a later restart (review16a F3).

So the version starts at max(wall-clock ms, the ceiling saved in the data dir + 1), and a ceiling is saved before
any version above the last one is announced: versions are reserved ``RESERVE`` at a time, one small atomic write
(write, fsync, rename, fsync of the folder) at start and one per ``RESERVE`` changes (changes are at most one per
``swim_io.VERSION_CHECK_S``, loads alone one per 30 s), not a write per change. Bounded: a saved ceiling above
``MAX_VERSION`` is refused like a damaged file (a clear log line, the wall clock alone, never a crash), and a
write that fails is logged and tried again ``RESERVE`` changes later. Pure but for ``load`` and ``save``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from agent.durable import write_atomic
from peerserve.wire import MAX_TERM

log = logging.getLogger(__name__)

FILE_NAME = "swim_version.json"
RESERVE = 1000  # versions reserved per write: a restart seeds at most this far past the last one announced
MAX_VERSION = MAX_TERM // 2  # a saved ceiling above this is damage (the wire refuses versions past MAX_TERM)
MAX_FILE_BYTES = 256


def seed(wall_ms: int, ceiling: int | None) -> int:
    """The first version of a process started at ``wall_ms`` (wall clock, ms), the last run's saved ``ceiling``
    (None: none, or unreadable): above every version the last run announced, and at least the wall clock's."""
    return wall_ms if ceiling is None else max(wall_ms, ceiling + 1)


def load(path: Path) -> int | None:
    """The saved ceiling; None when there is no file (first start), or it is damaged or out of bounds (logged)."""
    try:
        with open(path, "rb") as f:
            body = f.read(MAX_FILE_BYTES + 1)
        if len(body) > MAX_FILE_BYTES:
            raise ValueError(f"over {MAX_FILE_BYTES} bytes")
        value = json.loads(body).get("ceiling")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
            raise ValueError(f"'ceiling' must be an integer in [0, {MAX_VERSION}]")
        return value
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s): the state version starts from the wall clock alone; if that "
                    "clock was stepped back since the last start, members keep this node's old state until its "
                    "version passes the old one", path, exc)  # fmt: skip
        return None


def save(path: Path, ceiling: int) -> bool:
    """Replace the file atomically and durably (write, fsync, rename, fsync of the folder: without the last, a power
    cut within the next journal commit leaves the previous ceiling, review16c F1); errors are logged, never raised."""
    tmp = path.with_suffix(".tmp")
    try:
        write_atomic(path, json.dumps({"ceiling": ceiling}).encode(), tmp=tmp)
        return True
    except OSError as exc:
        log.warning("cannot save %s: %s (after a step back of the wall clock, a restart may announce an older "
                    "state version than this run's)", path, exc)  # fmt: skip
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False


class VersionFloor:
    """The versions this process may announce: ``first`` to start with, ``reserve(v)`` before announcing ``v``.
    ``path`` None (tests, no data dir): the wall clock alone, nothing saved."""

    def __init__(self, path: Path | None, wall_ms: int) -> None:
        self.path = path
        self.ceiling = load(path) if path is not None else None
        self.first = seed(wall_ms, self.ceiling)
        self.reserve(self.first)

    def reserve(self, version: int) -> None:
        """Save a ceiling of at least ``version`` (and ``RESERVE`` more) unless the saved one covers it already."""
        if self.path is None or (self.ceiling is not None and version <= self.ceiling) or version > MAX_VERSION:
            return
        ceiling = min(version + RESERVE, MAX_VERSION)
        save(self.path, ceiling)
        self.ceiling = ceiling  # also when the write failed: tried again RESERVE changes later, not at each
