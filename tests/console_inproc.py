"""The township console inside the test process, for tests that render many pages many
times (a property test, a walk of every page): Django set up once per process on a real
SQLite file, the ingest worker's own storing code fed directly (no broker), and pages
fetched through Django's full request stack (middleware, sessions, templates).

Django's settings are per process: every test that uses this module shares the one
console made here (its villages, its township)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TOWNSHIP = "t19"
VILLAGES = {"v042": "东村", "v043": "西村"}
PASSWORD = "pw-for-tests"
ROLES = {"officer": "duty_officer", "leader": "leader", "viewer": "viewer",
         "tech": "technician", "admin": "admin"}
LANGUAGES = ("zh-hans", "en")

_ready: dict[str, Any] = {}
# "postgres": the console of this process runs on a PostgreSQL database made for it
# (dropped at exit) instead of an SQLite file.
DB_ENV = "PINGAN_TEST_CONSOLE_DB"
PG = "postgres://postgres@127.0.0.1:5432/"


def _postgres() -> str:
    import atexit
    import uuid

    import psycopg
    name = f"pingan_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG + "postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections
        connections.close_all()
        with psycopg.connect(PG + "postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return PG + name


def setup() -> Path:
    """Once per process: config, Django, migrations, one user per role."""
    if "dir" in _ready:
        return Path(_ready["dir"])
    tmp = Path(tempfile.mkdtemp(prefix="pingan-console-"))
    villages = "\n".join(f'"{k}" = "{v}"' for k, v in VILLAGES.items())
    database = f"sqlite:///{tmp / 'centre.sqlite3'}"
    if os.environ.get(DB_ENV) == "postgres":
        database = _postgres()
    (tmp / "centre.toml").write_text(
        f'township = "{TOWNSHIP}"\ndatabase = "{database}"\n'
        f'data_dir = "{tmp / "data"}"\n[villages]\n{villages}\n', encoding="utf-8")
    os.environ["PINGAN_CENTRE_CONFIG"] = str(tmp / "centre.toml")
    os.environ["DJANGO_SETTINGS_MODULE"] = "pingan_centre.console.settings"
    import django
    django.setup()
    from pingan_centre.console import cli
    cli._migrate()
    for name, role in ROLES.items():
        cli._create(name, role, PASSWORD)
    _ready["dir"] = str(tmp)
    return tmp


def ingest() -> Any:
    """The real ingest worker (pingan_centre.console.ingest.Ingest), never connected: its
    `_store` is what the worker thread runs on each batch the broker hands it."""
    if "ingest" not in _ready:
        from django.conf import settings

        from pingan_centre.console.ingest import Ingest
        _ready["ingest"] = Ingest(settings.CENTRE)
    return _ready["ingest"]


def feed(messages: list[tuple[str, bytes]]) -> None:
    """One batch, as the broker would deliver it (QoS 0: nothing to acknowledge)."""
    ingest()._store([(topic, payload, 0, 0) for topic, payload in messages])


def client(user: str, language: str) -> Any:
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    c = Client()
    c.force_login(User.objects.get(username=user))
    c.cookies[settings.LANGUAGE_COOKIE_NAME] = language
    return c


def pages(alarm_ids: Iterable[int] | None = None) -> list[str]:
    """Every page urls.py serves by GET, filled in with every stored alarm (or only
    `alarm_ids`). Pages whose arguments this walk cannot fill are left out (named in
    `unwalked()`)."""
    from pingan_centre.console.models import Alarm
    paths, _ = _walk()
    alarms = (list(Alarm.objects.values_list("pk", flat=True)) if alarm_ids is None
              else list(alarm_ids))
    out: list[str] = []
    admin = client("admin", LANGUAGES[0])
    for route, params in paths:
        if not params:
            # A POST-only action (require_POST) is not a page: GET answers 405 without GET
            # in Allow; found by asking, so a new action needs no entry in SKIP.
            response = admin.get("/" + route)
            if response.status_code == 405 and "GET" not in response.get("Allow", ""):
                continue
            out.append("/" + route)
        elif params == ["alarm_id"]:
            out += ["/" + route.replace("<int:alarm_id>", str(a)) for a in alarms]
    out += [p + q for p in ("/stats",) for q in ("?by=station", "?by=month", "?include=all",
                                                  "?months=1&include=false,drill,test")]
    out += ["/stations?problem=offline", "/handover?hours=24", "/audit?q=alarm",
            "/report?include=all"]
    if any(route == "station" for route, _ in paths):  # one station's page, by its id
        from urllib.parse import quote

        from pingan_centre.console.models import Event, Station
        out += [f"/station?id={quote(name, safe='')}"
                for name in Station.objects.values_list("name", flat=True)]
        # A camera's gallery: for the stations that sent snapshots (one per station).
        out += [f"/camera?id={quote(name, safe='')}" for name in Event.objects.filter(
            type="camera.person").order_by().values_list("station_id", flat=True).distinct()]
    return out


# Not pages: the event stream, POST-only actions, logging out, Django's own admin (it
# has its own translations), the language switch.
SKIP = ("events", "alarm/<int:alarm_id>/<str:action>", "logout/", "i18n/", "admin/")


def _walk() -> tuple[list[tuple[str, list[str]]], list[str]]:
    import re

    from django.urls import URLPattern, get_resolver
    found: list[tuple[str, list[str]]] = []
    unwalked: list[str] = []
    for entry in get_resolver().url_patterns:
        route = str(entry.pattern)
        if not isinstance(entry, URLPattern) or route.startswith(SKIP):
            continue
        params = re.findall(r"<(?:\w+:)?(\w+)>", route)
        if params and params != ["alarm_id"] and route != "stats.<str:fmt>":
            unwalked.append(route)
            continue
        if route == "stats.<str:fmt>":
            found += [("stats.csv", []), ("stats.xlsx", [])]
            continue
        found.append((route, params))
    return found, unwalked


def unwalked() -> list[str]:
    return _walk()[1]


def reset() -> None:
    """An empty console again (every table), with its users: a test that must know all
    that is on its pages starts here."""
    setup()
    from django.core.management import call_command

    from pingan_centre.console import cli
    call_command("flush", interactive=False, verbosity=0)
    cli._migrate()  # the roles' groups and permissions again
    for name, role in ROLES.items():
        cli._create(name, role, PASSWORD)
