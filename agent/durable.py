"""One durable file replacement for the agent's small state files (pins, the revocation stamp record, the pin
cards, the SWIM state version's ceiling, the known peers): a power cut leaves the old file or the new one, never a
torn one, and never the old one once this returned.

Write a temporary file beside it, fsync it, rename it over the file, fsync the folder: without the last fsync
the rename itself can be lost in a power cut within the next journal commit (review16c F1 found it missing in
one of the copies this replaces).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, tmp: Path | None = None, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` durably through ``tmp`` (default: ``path`` + ".tmp"; left behind if a step
    fails, for the caller to report or remove), given to ``owner`` (uid, gid) before the rename; OSError."""
    tmp = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
