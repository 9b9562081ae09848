"""The township centre as the tests run it: a real `pingan-centre serve` process
on a real database (an SQLite file, or a PostgreSQL database made for the test), real
stations on a real broker, and HTTP sessions that log in like an officer."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import station_toml, wait_until

from edge import config as config_mod
from edge.station import Station
from pingan_sim.localbroker import free_port, reachable

PG = "postgres://postgres@127.0.0.1:5432/"
PASSWORD = "pw-for-tests"
ROLES = {"officer": "duty_officer", "leader": "leader", "viewer": "viewer",
         "tech": "technician", "admin": "admin"}


class Database:
    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.url = f"sqlite:///{tmp / 'centre.sqlite3'}"
            self.path = tmp / "centre.sqlite3"
        else:
            import psycopg
            self.name = f"pingan_test_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(PG + "postgres", autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.url = PG + self.name

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:
                return conn.execute(query, params).fetchall()
        import psycopg
        with psycopg.connect(self.url) as conn:
            return conn.execute(query.replace("?", "%s"), params).fetchall()

    def drop(self) -> None:
        if self.kind == "postgres":
            import psycopg
            with psycopg.connect(PG + "postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def database(kind: str, tmp: Path) -> Iterator[Database]:
    if kind == "postgres" and not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (start it: "
                    "pg_ctlcluster --skip-systemctl-redirect 15 main start)")
    db = Database(kind, tmp)
    try:
        yield db
    finally:
        db.drop()


class Centre:
    """One centre process; `restart()` kills it (-9 by default) and starts it again."""

    def __init__(self, tmp: Path, db: Database, broker_port: int, township: str,
                 villages: dict[str, str] | None = None, toml: str = "", **extra: Any
                 ) -> None:
        self.tmp = tmp
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.township = township
        config = {"township": township, "database": db.url, "data_dir": str(tmp / "data"),
                  "client_id": f"centre-{uuid.uuid4().hex[:8]}",
                  "broker": {"host": "127.0.0.1", "port": broker_port},
                  "villages": villages or {}, **extra}
        self.config = tmp / "centre.toml"
        self.config.write_text(_toml(config) + toml, encoding="utf-8")
        self.env = {**os.environ, "PINGAN_CENTRE_CONFIG": str(self.config),
                    "PYTHONUNBUFFERED": "1"}
        self.log = tmp / "centre.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._run("-c", _MAKE_USERS)

    def _run(self, *args: str) -> str:
        done = subprocess.run([sys.executable, *args], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def python(self, code: str) -> Any:
        """Run `code` in a process with the centre's Django set up; it prints JSON."""
        return json.loads(self._run("-c", _SETUP + code))

    def start(self) -> Centre:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pingan_centre", "serve", "--host",
                 "127.0.0.1", "--port", str(self.port)], env=self.env, stdout=log,
                stderr=subprocess.STDOUT)
        wait_until(lambda: reachable("127.0.0.1", self.port, 0.2) or self._dead(), 60,
                   "centre web server")
        wait_until(lambda: "ingest.connected" in self.log.read_text(encoding="utf-8")
                   or self._dead(), 30, "centre ingest connected")
        assert self.proc.poll() is None, self.log.read_text(encoding="utf-8")[-3000:]
        return self

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill(signal.SIGTERM)

    def session(self, user: str) -> requests.Session:
        s = requests.Session()
        s.get(f"{self.url}/login/", timeout=10)
        r = s.post(f"{self.url}/login/", data={
            "username": user, "password": PASSWORD,
            "csrfmiddlewaretoken": s.cookies["csrftoken"]}, timeout=10)
        assert r.ok and "sessionid" in s.cookies, f"login as {user} failed"
        return s

    def post(self, s: requests.Session, path: str, **data: str) -> requests.Response:
        return s.post(f"{self.url}{path}", data={**data,
                      "csrfmiddlewaretoken": s.cookies["csrftoken"]},
                      headers={"Accept": "application/json"}, timeout=10)

    def alarms(self, s: requests.Session) -> list[dict[str, Any]]:
        r = s.get(f"{self.url}/api/alarms", timeout=10)
        r.raise_for_status()
        return r.json()["alarms"]  # type: ignore[no-any-return]


def _toml(values: dict[str, Any]) -> str:
    top = [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in values.items()
           if not isinstance(v, dict)]
    tables = []
    for k, v in values.items():
        if isinstance(v, dict):
            tables.append(f"[{k}]")
            tables += [f"{json.dumps(a, ensure_ascii=False)} = "
                       f"{json.dumps(b, ensure_ascii=False)}" for a, b in v.items()]
    return "\n".join([*top, *tables, ""])


_SETUP = """
import json, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pingan_centre.console.settings")
import django
django.setup()
"""

_MAKE_USERS = _SETUP + f"""
from pingan_centre.console import cli
cli._migrate()
for name, role in {ROLES!r}.items():
    cli._create(name, role, {PASSWORD!r})
"""


def station(tmp: Path, port: int, name: str, township: str, **sections: Any) -> Station:
    text = station_toml(tmp / name, port, station=name, **sections).replace(
        'township = "t01"', f'township = "{township}"', 1)
    st = Station(config_mod.parse(text))
    st.start()
    return st


def press(st: Station) -> str:
    """The panic button, held past panic_hold_s; returns the event id it produced."""
    return st.alarm.raise_alarm("button", 0.1).result(5).id
