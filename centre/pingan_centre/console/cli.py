"""`pingan-centre serve|ingest|migrate|createuser`: the duty console's commands.

`serve` is the whole centre in one process (migrate, then the web server, whose ASGI
lifespan runs ingest and escalation): a township runs only that. `ingest` alone is a
second, redundant subscriber for the same group (with its own escalation ladder).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

# Exit statuses, as pingan-edge's: 2 = the configuration named in the log line must be
# fixed first (a restart alone cannot help).
EXIT_CONFIG = 2


def _django(config: str | None) -> None:
    if config:
        os.environ["PINGAN_CENTRE_CONFIG"] = config
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pingan_centre.console.settings")
    import django
    django.setup()


def _migrate() -> None:
    from django.core.management import call_command
    call_command("migrate", interactive=False, verbosity=0)


def _first_admin() -> None:
    """A fresh centre gets one admin, its password written beside the database (0600)."""
    from django.conf import settings
    from django.contrib.auth.models import User

    from pingan_centre.console import private

    if User.objects.exists():
        return
    password = secrets.token_urlsafe(12)
    _create("admin", "admin", password)
    path = settings.DATA_DIR / "admin-password.txt"
    private.write_new(path, password + "\n")
    print(f"first start: user 'admin', password in {path} (change it after logging in)",
          file=sys.stderr)


def _create(name: str, role: str, password: str) -> None:
    from django.contrib.auth.models import Group, User

    from pingan_centre.console.roles import ROLES
    if role not in ROLES:
        raise SystemExit(f"role must be one of {', '.join(ROLES)}")
    user, _ = User.objects.get_or_create(username=name)
    user.set_password(password)
    user.is_staff = role == "admin"
    user.is_superuser = role == "admin"
    user.save()
    user.groups.set([Group.objects.get(name=role)])


def serve(args: argparse.Namespace) -> int:
    """Migrate, then the web server, whose lifespan starts and stops the background
    parts (runtime.py). A part that does not start: exit status 3, the reason logged."""
    from pingan_centre.console.asgi import server
    from pingan_centre.console.logs import log
    _migrate()
    _first_admin()
    log("info", "centre.serving", url=f"http://{args.host}:{args.port}/")
    web = server(args.host, args.port, ingest=not args.no_ingest)
    web.run()
    return 0 if web.started else 3


def ingest(args: argparse.Namespace) -> int:
    from django.conf import settings

    from pingan_centre.console.logs import log
    from pingan_centre.console.runtime import CentreRuntime, StartupFailed
    _migrate()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        runtime = CentreRuntime(settings.CENTRE, live=False).start()
    except StartupFailed as why:
        log("error", "centre.startup_failed", reason=str(why),
            action="fix the cause above; nothing of the centre is left running")
        return 3
    try:
        done.wait()
    finally:
        runtime.close()
    return 0


def createuser(args: argparse.Namespace) -> int:
    _migrate()
    password = args.password or secrets.token_urlsafe(12)
    _create(args.name, args.role, password)
    if not args.password:
        print(password)
    return 0


def migrate(args: argparse.Namespace) -> int:
    _migrate()
    return 0


def _console(func: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """Django is set up only for the console's own subcommands, never for `broker`."""
    def run(args: argparse.Namespace) -> int:
        from django.core.exceptions import ImproperlyConfigured

        from pingan_centre.console.config import SecretKeyError
        from pingan_centre.console.logs import log, setup
        setup()
        try:
            _django(args.config)
        except ImproperlyConfigured as exc:  # raised by settings, e.g. a leaked secret key
            problem, action = ((exc.problem, exc.action) if isinstance(exc, SecretKeyError)
                               else (str(exc), "fix what the error names, then start again"))
            log("error", "centre.cannot_start", error=problem, exit=EXIT_CONFIG, action=action)
            return EXIT_CONFIG
        return int(func(args))
    return run


def add_parsers(sub: Any) -> None:
    """Add the console's subcommands to `pingan-centre`'s subparsers."""
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", help="centre TOML (default $PINGAN_CENTRE_CONFIG)")
    p = sub.add_parser("serve", parents=[config],
                       help="the whole centre: web, ingest, escalation")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-ingest", action="store_true", help="web and escalation only")
    p.set_defaults(fn=_console(serve))
    sub.add_parser("ingest", parents=[config],
                   help="only the MQTT subscriber (a redundant second process)"
                   ).set_defaults(fn=_console(ingest))
    sub.add_parser("migrate", parents=[config], help="create or update the database"
                   ).set_defaults(fn=_console(migrate))
    p = sub.add_parser("createuser", parents=[config],
                       help="add a user or reset one's password and role")
    p.add_argument("name")
    p.add_argument("--role", required=True,
                   choices=["viewer", "duty_officer", "leader", "technician", "admin"])
    p.add_argument("--password", help="default: generated and printed")
    p.set_defaults(fn=_console(createuser))
