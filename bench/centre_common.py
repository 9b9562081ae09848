"""What the console benchmarks share: a centre process on a database, its users, events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from pingan_sim.localbroker import free_port, reachable

PG = "postgres://postgres@127.0.0.1:5432/"
PASSWORD = "bench-pw"


class Db:
    """An SQLite file or a fresh PostgreSQL database, dropped by close()."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.name = ""
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp / f'centre-{uuid.uuid4().hex[:6]}.sqlite3'}"
        else:
            import psycopg
            self.name = f"pingan_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG + "postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = PG + self.name

    def count(self, table: str) -> int:
        if self.kind == "sqlite":
            import sqlite3
            with sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30) as conn:
                return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        import psycopg
        with psycopg.connect(self.url) as conn:
            row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
            return int(row[0]) if row else 0

    def close(self) -> None:
        if self.kind == "postgres":
            import psycopg
            with psycopg.connect(PG + "postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def pg_available() -> bool:
    return reachable("127.0.0.1", 5432)


class Centre:
    def __init__(self, tmp: Path, db: Db, broker_port: int, township: str,
                 users: dict[str, str] | None = None,
                 account: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        tag = uuid.uuid4().hex[:8]
        self.dir = tmp / f"centre-{tag}"
        self.dir.mkdir()
        config = self.dir / "centre.toml"
        config.write_text(
            f'township = "{township}"\ndatabase = "{db.url}"\ndata_dir = "{self.dir}"\n'
            f'client_id = "bench-{tag}"\n[broker]\nhost = "127.0.0.1"\nport = {broker_port}\n'
            # The shipped broker's loopback listener: a centre account (name, password).
            + (f'username = "{account[0]}"\npassword = "{account[1]}"\n' if account else ""),
            encoding="utf-8")
        self.env = {**os.environ, "PINGAN_CENTRE_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
        self.log = self.dir / "centre.log"
        self.proc: subprocess.Popen[bytes] | None = None
        users = users or {}
        self.python(f"""
from pingan_centre.console import cli
cli._migrate()
for name, role in {users!r}.items():
    cli._create(name, role, {PASSWORD!r})
""")

    def python(self, code: str) -> str:
        setup = ("import os, json\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', "
                 "'pingan_centre.console.settings')\nimport django\ndjango.setup()\n")
        done = subprocess.run([sys.executable, "-c", setup + code], env=self.env,
                              capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        return done.stdout

    def start(self, command: str = "serve", *extra: str) -> Centre:
        args = [sys.executable, "-m", "pingan_centre", command]
        if command == "serve":
            args += ["--host", "127.0.0.1", "--port", str(self.port), *extra]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text(encoding="utf-8")
            ready = "ingest.connected" in text or "--no-ingest" in extra
            if command == "serve":
                ready = ready and reachable("127.0.0.1", self.port, 0.2)
            if ready:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(text[-3000:])
            time.sleep(0.05)
        raise RuntimeError("centre did not start: " + self.log.read_text(encoding="utf-8"))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def now_ts() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(township: str, station: str, seq: int, kind: str = "button.broadcast"
          ) -> dict[str, Any]:
    """A valid event of the published schema, as a light simulated station sends it."""
    payload: dict[str, Any]
    if kind == "alarm.panic":
        payload, priority = {"source": "simulator", "held_s": 0.1}, 0
    elif kind == "status":
        payload, priority = {"code": "bench", "level": "info",
                             "message": {"zh": "测试", "en": "bench"}, "detail": {}}, 3
    else:
        payload, priority = {"button": "broadcast", "source": "simulator", "held_s": 0.2}, 2
    return {"type": kind, "id": str(uuid.uuid4()), "station": station, "township": township,
            "seq": seq, "priority": priority, "ts": now_ts(), "clock_synced": True,
            "payload": payload}


def state(township: str, station: str, online: bool = True) -> dict[str, Any]:
    return {"station": station, "township": township, "online": online, "version": "0.1.0",
            "ts": now_ts(), "clock_synced": True, "pending": 0, "problems": [],
            "counters": {}}


def dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"),
                            options=options)
