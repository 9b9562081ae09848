"""The one way the unit replaces a small file so that a power cut leaves the old file or
the new one, never half of either: a fresh temporary file beside it, given its mode (and
owner) before any data, written, fsynced, renamed over the file, and the directory
fsynced so that the rename itself is on the card.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write(path: Path, data: bytes, *, mode: int = 0o644,
          owner: tuple[int, int] | None = None) -> None:
    """Durably replace `path` with `data`: `mode` exactly, whatever the umask (0600 for a
    secret), and `owner` (uid, gid) if given. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # One left by a crash keeps its old mode and owner: start afresh (O_EXCL: never
    # through a file or a symlink put there first).
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_dir(path.parent)


def settle(written: Path, path: Path) -> None:
    """Durably put `written` (already complete, e.g. received in chunks) in place as
    `path`. Raises OSError."""
    fd = os.open(written, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(written, path)
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    """fsync a directory, so that the names created, renamed or removed in it last."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # some file systems cannot sync a directory
            os.fsync(fd)
    finally:
        os.close(fd)
