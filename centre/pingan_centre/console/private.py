"""Files only the console's own user may read: the secret key, the first admin's password
and the SQLite database (it holds the login sessions).

Each is 0600 from its first byte (os.open with the mode, never chmod after the data is in),
so there is no moment at which another local user can open it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

MODE = 0o600


def _open_new(path: Path) -> int:
    # O_EXCL: never a file (or symlink) someone else put there first.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)


def write_new(path: Path, text: str) -> None:
    """Replace `path` with a new 0600 file holding `text`. The old file is unlinked, not
    truncated: whoever opened it while it was readable must not see what is written now."""
    path.unlink(missing_ok=True)
    with os.fdopen(_open_new(path), "w", encoding="utf-8") as f:
        f.write(text)


def write_once(path: Path, text: str) -> None:
    """Create `path` holding `text` unless it exists. Written whole beside it, then linked
    in: a second process starting at the same moment reads one whole file, the first one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash of an earlier process with this pid
    try:
        with os.fdopen(_open_new(tmp), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create(path: Path) -> None:
    """Make sure the database file `path` exists and is at most 0600: created empty so if
    it is missing (SQLite then gives its -wal and -shm files the same mode), else it and
    its side files narrowed."""
    try:
        os.close(_open_new(path))
    except FileExistsError:
        for side in ("", "-wal", "-shm", "-journal"):
            narrow(Path(f"{path}{side}"))


def narrow(path: Path) -> None:
    """Take away what 0600 does not allow from an existing file (one an older version
    made 0644); a file we may not change stays as it is."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~MODE:
            os.chmod(path, mode & MODE)
