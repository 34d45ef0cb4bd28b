"""One durable file replacement for the agent's small state files (pins, the revocation stamp record, the pin
cards, the SWIM state version's ceiling, the known peers): a power cut leaves the old file or the new one, never a
torn one, and never the old one once this returned.

Write a temporary file beside it, fsync it, rename it over the file, fsync the folder: without the last fsync
the rename itself can be lost in a power cut within the next journal commit (review16c F1 found it missing in
one of the copies this replaces). ``write_synced`` / ``fsync_dir`` are the steps, for a caller that writes in a
thread and renames on its event loop (the revocation list members hand a board, agent/operator_ca.py).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(
    path: Path, data: bytes, tmp: Path | None = None, owner: tuple[int, int] | None = None
) -> os.stat_result:
    """Replace ``path`` with ``data`` durably through ``tmp`` (default: ``path`` + ".tmp"; left behind if a step
    fails, for the caller to report or remove), given to ``owner`` (uid, gid) before the rename; OSError. Returns the
    file written's stat, taken on its own descriptor (a rename keeps inode, mtime and size): what ``path`` holds
    unless another writer replaced it since, which a later ``stat`` of ``path`` would hide (review19a F2)."""
    tmp = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    st = write_synced(tmp, data, owner)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return st


def unique_tmp(path: Path) -> Path:
    """A temporary name beside ``path`` that no other writer uses (two writers on one name can rename a torn file
    into place): ``path`` + "." + 16 random hex digits + ".tmp" (``tmp_glob`` finds them after a crash)."""
    return path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")


def tmp_glob(path: Path) -> str:
    """The pattern of ``unique_tmp``'s names for ``path``, within its folder."""
    return f"{path.name}.{'[0-9a-f]' * 16}.tmp"


def write_synced(tmp: Path, data: bytes, owner: tuple[int, int] | None = None) -> os.stat_result:
    """Write ``data`` to ``tmp`` and fsync it (given to ``owner`` if set); its stat (on the descriptor); OSError."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        return os.fstat(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
