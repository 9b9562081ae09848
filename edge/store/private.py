"""The station's data directory is its own user's alone: the outbox (every event), the SMS
log (the duty officers' numbers), the loudspeaker's schedules and uploaded clips.

`pingan-edge run` sets UMASK before it writes anything, so whatever it creates there is
0600 (directories 0700) from the start. Each database is also created 0600 here before
SQLite opens it, whoever opens it (a test, `selftest` as root): SQLite gives the -wal and
-shm files the database file's mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

UMASK = 0o077
MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")


def create(path: Path) -> None:
    """Make sure the database file `path` exists and is at most 0600: created empty so if
    it is missing (O_EXCL: never through a file or symlink put there first), else it and
    its side files narrowed (an older version made them 0644)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE))
    except FileExistsError:
        for name in ("", *_SIDE_FILES):
            narrow(Path(f"{path}{name}"))


def narrow(path: Path) -> None:
    """Take away what 0600 does not allow; a file that is missing or that we may not
    change (read-only mount, another owner) stays as it is."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~MODE:
            os.chmod(path, mode & MODE)


def sqlite_uri(path: Path) -> str:
    """The URI to open a database of the data directory that only this process uses.
    SQLite's unix-excl VFS keeps a WAL's index in this process's memory instead of a
    mapped `-shm` file on the SD card, whose dirty pages were written back after every
    transaction; other processes cannot open the database meanwhile, and after a crash
    the index is rebuilt from the WAL."""
    return f"{path.absolute().as_uri()}?vfs=unix-excl"
