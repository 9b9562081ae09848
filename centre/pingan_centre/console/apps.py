from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_migrate


def _groups(sender: Any, **_: Any) -> None:
    from pingan_centre.console.roles import ensure_groups
    ensure_groups()


def _login(sender: Any, request: Any, user: Any, **_: Any) -> None:
    from django.utils import timezone

    from pingan_centre.console.lifecycle import audit
    audit(user.get_username(), "login", "", timezone.now(),
          ip=request.META.get("REMOTE_ADDR", "") if request else "")


def _logout(sender: Any, request: Any, user: Any, **_: Any) -> None:
    from django.utils import timezone

    from pingan_centre.console.lifecycle import audit
    if user is not None:
        audit(user.get_username(), "logout", "", timezone.now())


class ConsoleConfig(AppConfig):
    name = "pingan_centre.console"
    label = "console"
    verbose_name = "Ping'an township console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Permissions exist only after migrate's post_migrate: the groups follow them.
        post_migrate.connect(_groups, sender=self)
        user_logged_in.connect(_login)
        user_logged_out.connect(_logout)
