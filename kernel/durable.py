"""Durable local writes: what is written here survives a crash once the call returns.

The file store's versions and the local tenant key are both written this way: the
file's bytes are fsynced before it is closed, and the directory that names it is
fsynced after it appears (a rename or link is durable only then).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "write_durable"]


def write_durable(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Create `path` (it must not exist: ``O_EXCL``) with `data`, fsynced before closing.

    `mode` applies at creation, so a secret is never readable by others, not even
    for an instant. Raises ``FileExistsError`` when `path` exists.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a reader sees the old bytes or the new.

    Written beside it under a temporary name (removed on failure), renamed over it,
    then the directory is fsynced.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        write_durable(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the names in `directory` durable (after a create, rename, link or unlink)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
