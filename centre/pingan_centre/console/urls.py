from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from pingan_centre.console import (
    broadcast_views,
    camera_views,
    clip_views,
    health_views,
    report_views,
    rollout_views,
    rota,
    views,
)

urlpatterns = [
    path("", views.duty, name="duty"),
    path("cards", views.cards, name="cards"),
    path("events", views.stream, name="stream"),
    path("api/alarms", views.alarms_json, name="alarms_json"),
    path("alarm/<int:alarm_id>", views.alarm_detail, name="alarm"),
    # By the alarm, not the event id: a URL must work for every id ever stored (issue 19).
    path("alarm/<int:alarm_id>/snapshot.jpg", views.snapshot, name="snapshot"),
    path("alarm/<int:alarm_id>/<str:action>", views.act, name="act"),
    path("stations", views.stations, name="stations"),
    path("station", health_views.station_detail, name="station"),
    path("stats", views.statistics, name="stats"),
    path("stats.<str:fmt>", views.export, name="export"),
    path("camera", camera_views.cameras, name="cameras"),
    path("camera/snapshot.jpg", camera_views.snapshot, name="camera_snapshot"),
    path("camera/command", camera_views.command, name="camera_command"),
    path("report", report_views.monthly, name="report"),
    path("report.xlsx", report_views.xlsx, name="report_xlsx"),
    path("handover", views.handover, name="handover"),
    path("quarantine", views.quarantine, name="quarantine"),
    path("audit", views.audit_log, name="audit"),
    path("rota", rota.rota, name="rota"),
    path("rota/<int:shift_id>/delete", rota.rota_delete, name="rota_delete"),
    path("releases", rollout_views.releases, name="releases"),
    path("releases/start", rollout_views.start, name="rollout_start"),
    path("releases/<str:rollout_id>/rest", rollout_views.advance, name="rollout_advance"),
    path("broadcasts", broadcast_views.broadcasts, name="broadcasts"),
    path("broadcasts/send", broadcast_views.send, name="broadcast_send"),
    path("broadcast", broadcast_views.detail, name="broadcast"),
    path("broadcast/results", broadcast_views.results, name="broadcast_results"),
    path("broadcast/clip", broadcast_views.clip, name="broadcast_clip"),
    path("broadcast/stop", broadcast_views.stop, name="broadcast_stop"),
    path("clips", clip_views.clips, name="clips"),
    path("clips/upload", clip_views.upload, name="clip_upload"),
    path("clips/send", clip_views.send, name="clip_send"),
    path("clips/delete", clip_views.delete, name="clip_delete"),
    path("clips/remove", clip_views.remove, name="clip_remove"),
    path("clips/progress", clip_views.progress, name="clip_progress"),
    path("clips/audio", clip_views.audio, name="clip_audio"),
    path("groups/save", broadcast_views.group_save, name="group_save"),
    path("groups/delete", broadcast_views.group_delete, name="group_delete"),
    path("login/", auth_views.LoginView.as_view(template_name="console/login.html"),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
]
