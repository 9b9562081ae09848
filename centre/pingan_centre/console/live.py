"""What changed, for the duty screen's server-sent events.

Alarm changes are rows in Transition (every change writes one), so the largest
Transition id is a version every centre process can see. A change made in this process
also bumps a local counter, so its screens hear of it without waiting for the poll.
Station state does not count: a thousand stations' states would redraw every screen many
times a second; the cards redraw their station health every 30 s instead.
"""

from __future__ import annotations

import threading

from django.db.models import Max

_lock = threading.Lock()
_local = 0


def bump() -> None:
    global _local
    with _lock:
        _local += 1


def local() -> int:
    return _local


def alarms_version() -> int:
    from pingan_centre.console.models import Transition
    return int(Transition.objects.aggregate(m=Max("id"))["m"] or 0)
