"""The five roles as Django groups, and what each may do."""

from __future__ import annotations

ALARM_PERMS = ["ack_alarm", "dispatch_alarm", "resolve_alarm", "shelve_alarm"]

# The duty rota (值班表): leaders and admins fill it in; everyone logged in sees it.
ROTA_PERMS = ["add_dutyshift", "delete_dutyshift"]

# Broadcasts to the loudspeakers (issue 23): officers send and stop them; leaders and
# admins keep the saved groups of stations.
BROADCAST_PERMS = ["add_broadcast"]
GROUP_PERMS = ["add_stationgroup", "change_stationgroup", "delete_stationgroup"]
# Schedules kept on the stations (issue 23): as broadcasts, officers keep and push them.
SCHEDULE_PERMS = ["add_schedule", "change_schedule", "delete_schedule"]

ROLES: dict[str, list[str]] = {
    "viewer": [],
    "duty_officer": [*ALARM_PERMS, *BROADCAST_PERMS, *SCHEDULE_PERMS],
    "leader": [*ALARM_PERMS, "reopen_alarm", "export_stats", "view_quarantine", *ROTA_PERMS,
               *BROADCAST_PERMS, *GROUP_PERMS, *SCHEDULE_PERMS],
    "technician": ["view_quarantine", "change_station", "view_station"],
    "admin": [*ALARM_PERMS, "reopen_alarm", "export_stats", "view_quarantine",
              "change_station", "view_station", "view_auditentry", *ROTA_PERMS,
              *BROADCAST_PERMS, *GROUP_PERMS, *SCHEDULE_PERMS],
}


def ensure_groups() -> None:
    """Create or refresh the groups (after every migrate: permissions come from it)."""
    from django.contrib.auth.models import Group, Permission

    for role, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = Permission.objects.filter(content_type__app_label="console",
                                          codename__in=codenames)
        group.permissions.set(perms)
