"""One durable file replacement for the agent's small state files (pins, the revocation stamp record, the pin
cards, the SWIM state version's ceiling, the known peers): a power cut leaves the old file or the new one, never a
torn one, and never the old one once this returned.

Write a temporary file beside it, fsync it, rename it over the file, fsync the folder: without the last fsync
the rename itself can be lost in a power cut within the next journal commit (review16c F1 found it missing in
one of the copies this replaces). ``write_synced`` / ``fsync_dir`` are the steps, for a caller that writes in a
thread and renames on its event loop (the revocation list members hand a board, agent/operator_ca.py). The
temporary file is always created anew (``write_synced``: O_EXCL, O_NOFOLLOW, mode 0600), never opened through a
link planted at its name.
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


TMP_MODE = 0o600  # the agent's state files are its own (their folder is 0700 too)


def write_synced(tmp: Path, data: bytes, owner: tuple[int, int] | None = None, mode: int = TMP_MODE) -> os.stat_result:
    """Write ``data`` to ``tmp``, a file this call creates (``mode``), and fsync it (given to ``owner`` if set); its
    stat (on the descriptor); OSError. Opened O_CREAT|O_EXCL|O_NOFOLLOW, never followed or written through: a
    symlink planted at ``tmp`` (by whoever can write the folder) no longer sends the write to its target, nor does a
    hard link or a file held open elsewhere see it. A leftover at ``tmp`` (a crash's temporary file, or a planted
    link) is unlinked, never written into, and the create tried once more (FileExistsError if it is back)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        os.unlink(tmp)  # the name only: a symlink itself, not what it points to; a folder there is an OSError
        fd = os.open(tmp, flags, mode)
    with os.fdopen(fd, "wb") as f:
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
