"""A private Mosquitto on loopback: started, stopped, restarted, frozen.

The simulated station starts one when `broker.local_fallback` is set and the configured
broker cannot be reached, so that `pingan-sim run` works on a bare machine with
mosquitto installed; the tests and benches start their own.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class BrokerError(RuntimeError):
    """The local broker could not be started."""


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port that is free now and that the kernel will not hand to an outgoing
    connection meanwhile: chosen below the ephemeral range, where port 0 would pick one.
    (A port from bind(0) can be taken by any client's connect() before the server binds
    it, which on a busy machine happened: "address already in use".)"""
    low, _high = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BrokerError(f"no free loopback port below {low}")


class Mosquitto:
    """One mosquitto process on 127.0.0.1:`port`, its files under `workdir`.

    `extra` is appended to the generated config (listeners, auth, limits); `config`, if
    given, is used instead of the generated one (it must listen on 127.0.0.1:`port`)."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "",
                 persistence: bool = True, config: str | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.persistence = persistence
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _write_conf(self) -> None:
        if self.config is not None:
            self.conf_path.write_text(self.config, encoding="utf-8")
            return
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "allow_anonymous" not in self.extra else "",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.log_path}",
            "log_type error", "log_type warning", "log_type notice",
            "set_tcp_nodelay true",
            # Defaults drop QoS 1 messages past 1000 queued per client: a township that
            # was away must get every alarm.
            "max_queued_messages 0" if "max_queued_messages" not in self.extra else "",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops privileges and cannot write here
        self.conf_path.write_text("\n".join([*lines, self.extra, ""]), encoding="utf-8")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        self._proc = subprocess.Popen([exe, "-c", str(self.conf_path)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: {err.strip()}"
                                  f" (config {self.conf_path}, log {self.log_path})")
            if reachable("127.0.0.1", self.port, 0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM saves persistence first; SIGKILL is a crash."""
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def save(self, timeout: float = 5.0) -> None:
        """Ask mosquitto to write its persistence file now (SIGUSR1) and wait for it."""
        db = self.workdir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        if self._proc and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime_ns != before:
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not save {db} within {timeout} s")

    def signal(self, sig: int) -> None:
        """SIGHUP rereads certificates and the CRL; SIGSTOP freezes it (a hung broker),
        SIGCONT thaws it."""
        if self._proc is None:
            raise BrokerError("mosquitto is not running")
        self._proc.send_signal(sig)

    def restart(self) -> Mosquitto:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int | None:
        """The running broker's process id (a bench reads its CPU and memory)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
