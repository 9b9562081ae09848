"""A real systemd-journald of a test's own (a journald namespace), and a stream to it as
systemd gives a service's stderr."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

JOURNALD = Path("/lib/systemd/systemd-journald")


@contextlib.contextmanager
def journald(tag: str, config: str | None = None) -> Iterator[str]:
    """Sockets in /run/systemd/journal.NS, files in /var/log/journal/MACHINE-ID.NS (or
    /run/log/journal), stopped and removed afterwards; `config` as its journald@NS.conf.
    Yields the namespace."""
    if os.geteuid() != 0 or not JOURNALD.exists() or not Path("/etc/machine-id").exists():
        pytest.skip("a journald of its own needs root and systemd-journald")
    ns = f"{tag}{os.getpid()}"
    run_dir = Path(f"/run/systemd/journal.{ns}")
    machine = Path("/etc/machine-id").read_text().strip()
    files = [Path(d) / f"{machine}.{ns}" for d in ("/var/log/journal", "/run/log/journal")]
    conf = Path(f"/etc/systemd/journald@{ns}.conf")
    if config is not None:
        conf.write_text(config)
    proc = subprocess.Popen([str(JOURNALD), ns], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (run_dir / "stdout").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield ns
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(run_dir, ignore_errors=True)
        for f in files:
            shutil.rmtree(f, ignore_errors=True)
        conf.unlink(missing_ok=True)


@contextlib.contextmanager
def stream(ns: str, identifier: str) -> Iterator[tuple[socket.socket, str]]:
    """A stream to journald as systemd makes a service's stderr (identifier, no unit,
    priority info, level prefixes read, no forwarding), with its $JOURNAL_STREAM value."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(f"/run/systemd/journal.{ns}/stdout")
        sock.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
        sock.shutdown(socket.SHUT_RD)
        st = os.fstat(sock.fileno())
        yield sock, f"{st.st_dev}:{st.st_ino}"
