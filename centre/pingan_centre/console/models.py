"""What the centre keeps: stations, events (one row per event id), alarms and their
lifecycle, commands sent and their results, payloads kept aside, and the audit log."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _

from pingan_centre.console.words import shown


class AppendOnly(models.Model):
    """Rows that are history: written once, never changed or deleted by the application."""

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and type(self)._default_manager.filter(pk=self.pk).exists():
            raise PermissionError(f"{type(self).__name__} is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(f"{type(self).__name__} is append-only")


class Station(models.Model):
    name = models.CharField(max_length=64, primary_key=True)
    township = models.CharField(max_length=64)
    village = models.CharField(_("village"), max_length=100, blank=True, default="")
    # The station's own name, from its state (station.toml's [station] name).
    label = models.CharField(_("station name"), max_length=100, blank=True, default="")
    online = models.BooleanField(default=False)
    # The station's clock when it sent its last state: unreliable while not clock_synced.
    state_ts = models.CharField(max_length=40, blank=True, default="")
    # When that state reached the township: states are taken in this order.
    state_at = models.DateTimeField(null=True, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    problems = models.JSONField(default=list, blank=True)
    pending = models.IntegerField(null=True, blank=True)
    version = models.CharField(max_length=40, blank=True, default="")
    clock_synced = models.BooleanField(default=False)
    last_selftest = models.DateTimeField(null=True, blank=True)
    # None: never self-tested on site (or only by a selftest-sourced press).
    last_selftest_passed = models.BooleanField(null=True, blank=True)
    counters = models.JSONField(default=dict, blank=True)
    # The clip library the station reports in its state: {clip id: sha256[:16]}; None
    # when it does not report one (no loudspeaker, or not heard from since issue 23).
    clips = models.JSONField(null=True, blank=True)


    # The loudspeaker's stored schedules from its last state, [{schedule_id, cron,
    # digest}]; None: the station does not report them (issue 23).
    schedules = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["village", "name"]

    def __str__(self) -> str:
        return f"{self.village or '-'} / {self.name}"


class Alarm(models.Model):
    class State(models.TextChoices):
        NEW = "new", _("new")
        ACKNOWLEDGED = "acknowledged", _("acknowledged")
        DISPATCHED = "dispatched", _("dispatched")
        ON_SCENE = "on_scene", _("on scene")
        RESOLVED = "resolved", _("resolved")
        SHELVED = "shelved", _("shelved")

    class Outcome(models.TextChoices):
        GENUINE = "genuine", _("genuine")
        FALSE = "false", _("false alarm")
        DRILL = "drill", _("drill")
        TEST = "test", _("test")

    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="alarms")
    first_event = models.CharField(max_length=64, unique=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.NEW,
                             db_index=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, blank=True, default="")
    raised_at = models.DateTimeField(db_index=True)
    station_ts = models.CharField(max_length=40, blank=True, default="")
    presses = models.IntegerField(default=1)
    escalation = models.IntegerField(default=0)
    loud = models.BooleanField(default=False)
    dispatched_to = models.CharField(max_length=200, blank=True, default="")
    shelved_until = models.DateTimeField(null=True, blank=True)
    shelve_reason = models.CharField(max_length=500, blank=True, default="")
    snapshot = models.ForeignKey("Event", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    acked_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    on_scene_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    ack_by = models.CharField(max_length=150, blank=True, default="")
    ack_cmd = models.CharField(max_length=64, blank=True, default="")

    OPEN = (State.NEW, State.ACKNOWLEDGED, State.DISPATCHED, State.ON_SCENE, State.SHELVED)

    class Meta:
        ordering = ["-raised_at"]
        permissions = [
            ("ack_alarm", "Can acknowledge alarms"),
            ("dispatch_alarm", "Can dispatch and record arrival"),
            ("resolve_alarm", "Can resolve alarms"),
            ("shelve_alarm", "Can shelve alarms"),
            ("reopen_alarm", "Can reopen alarms"),
            ("export_stats", "Can export statistics"),
            ("view_quarantine", "Can see payloads kept aside"),
        ]
        indexes = [models.Index(fields=["station", "state"])]

    def __str__(self) -> str:
        return f"alarm {self.pk} at {self.station_id} ({self.state})"


class Event(models.Model):
    """Every accepted event once (the station may send one twice: its id decides)."""

    id = models.CharField(max_length=64, primary_key=True)
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="events")
    type = models.CharField(max_length=40, db_index=True)
    seq = models.BigIntegerField(default=0)
    priority = models.IntegerField(default=3)
    ts = models.CharField(max_length=40)
    # The station's clock was synchronised when it stamped `ts` (None: before issue 19).
    clock_synced = models.BooleanField(null=True)
    received_at = models.DateTimeField(db_index=True)
    payload = models.JSONField(default=dict)
    alarm = models.ForeignKey(Alarm, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="events")

    class Meta:
        ordering = ["-received_at"]


ACTION_LABELS = {
    "raise": _("pressed"), "press": _("pressed again"), "ack": _("acknowledged"),
    "dispatch": _("dispatched"), "on_scene": _("on scene"), "resolve": _("resolved"),
    "shelve": _("shelved"), "reopen": _("reopened"), "unshelve": _("shelf ended"),
    "escalate": _("escalated"), "station_received": _("station shows received"),
    "station_error": _("station error"), "snapshot": _("snapshot"),
    "sms_queued": _("SMS queued"), "sms_sent": _("SMS sent"),
    "sms_delivered": _("SMS delivered"), "sms_failed": _("SMS failed"),
}


BY_LABELS = {"station": _("the station"), "system": _("the centre")}


class Transition(AppendOnly):
    """One step in an alarm's life: who, when, what, with a note. Never edited."""

    alarm = models.ForeignKey(Alarm, on_delete=models.PROTECT, related_name="transitions")
    action = models.CharField(max_length=20)
    from_state = models.CharField(max_length=20, blank=True, default="")
    to_state = models.CharField(max_length=20, blank=True, default="")
    by = models.CharField(max_length=150)
    at = models.DateTimeField()
    note = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["at", "id"]

    @property
    def label(self) -> str:
        return str(ACTION_LABELS.get(self.action, self.action))

    @property
    def shown_by(self) -> str:
        """Who: an officer's user name, or the station / the centre itself."""
        return str(BY_LABELS.get(self.by, self.by))

    @property
    def shown_note(self) -> str:
        """The note in the reader's language (a station's error comes in both)."""
        return shown(self.note)

    @property
    def state_label(self) -> str:
        return str(Alarm.State(self.to_state).label) if self.to_state else ""


class EscalationFired(AppendOnly):
    """A rung of the ladder fired for an alarm: unique, so it fires once even with two
    centre processes running."""

    alarm = models.ForeignKey(Alarm, on_delete=models.PROTECT, related_name="escalations")
    step = models.CharField(max_length=40)
    at = models.DateTimeField()
    notified = models.JSONField(default=list)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alarm", "step"], name="step_once")]


class Command(models.Model):
    """A command sent to a station, and the station's cmd.result when it comes."""

    id = models.CharField(max_length=64, primary_key=True)
    station = models.ForeignKey(Station, on_delete=models.PROTECT, related_name="commands")
    cmd = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    alarm = models.ForeignKey(Alarm, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="commands")
    by = models.CharField(max_length=150)
    created_at = models.DateTimeField()
    sent = models.BooleanField(default=False)
    result_ok = models.BooleanField(null=True)
    result = models.JSONField(null=True, blank=True)
    result_at = models.DateTimeField(null=True, blank=True)


class Quarantined(models.Model):
    """A payload that failed validation: kept with its reason (both languages, see
    words.py), never dropped silently."""

    topic = models.CharField(max_length=300)
    received_at = models.DateTimeField(db_index=True)
    size = models.IntegerField()
    reason = models.TextField()
    # The first bytes only: an oversized payload must not fill the database.
    head = models.BinaryField()

    class Meta:
        ordering = ["-received_at"]

    @property
    def shown_reason(self) -> str:
        return shown(self.reason)


class AuditEntry(AppendOnly):
    at = models.DateTimeField(db_index=True)
    user = models.CharField(max_length=150)
    action = models.CharField(max_length=60)
    target = models.CharField(max_length=120, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"




class DutyShift(models.Model):
    """Who is on duty when, at which phone: the escalation ladder texts whoever's shift
    covers the moment a rung fires (pingan_centre/console/sms.py)."""

    class Role(models.TextChoices):
        DUTY_OFFICER = "duty_officer", _("duty officer")
        LEADER = "leader", _("leader")

    name = models.CharField(_("name"), max_length=100)
    phone = models.CharField(_("phone"), max_length=20)
    role = models.CharField(_("role"), max_length=20, choices=Role.choices,
                            default=Role.DUTY_OFFICER)
    starts = models.DateTimeField(_("starts"), db_index=True)
    ends = models.DateTimeField(_("ends"), db_index=True)
    created_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["starts", "name"]

    def __str__(self) -> str:
        return f"{self.name} {self.phone} {self.starts:%Y-%m-%d %H:%M}-{self.ends:%H:%M}"


class SmsMessage(models.Model):
    """One escalation text to one phone, decided before anything is sent (at least once:
    its parts are sent again until each is known accepted)."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        SENT = "sent", _("sent")
        DELIVERED = "delivered", _("delivered")
        FAILED = "failed", _("could not be sent")
        HELD_BACK = "held_back", _("held back (rate limit)")

    alarm = models.ForeignKey(Alarm, on_delete=models.PROTECT, related_name="sms")
    step = models.CharField(max_length=40)
    number = models.CharField(max_length=20)
    name = models.CharField(max_length=100, blank=True, default="")
    code = models.CharField(max_length=8)
    text = models.TextField()
    # The concatenation reference every part carries, the same when a part goes again.
    ref = models.IntegerField()
    parts = models.IntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED,
                              db_index=True)
    created = models.DateTimeField(db_index=True)
    error = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["created", "id"]
        constraints = [models.UniqueConstraint(fields=["alarm", "step", "number"],
                                               name="sms_once_per_rung_and_number")]


class SmsPart(models.Model):
    """One part's state, durable: queued -> submitted (its PDU about to reach the modem)
    -> accepted (the network's +CMGS reference) -> delivered or failed (its report)."""

    message = models.ForeignKey(SmsMessage, on_delete=models.CASCADE, related_name="part_set")
    idx = models.IntegerField()
    state = models.CharField(max_length=10, default="queued", db_index=True)
    mr = models.IntegerField(null=True, blank=True)  # the +CMGS message reference
    attempts = models.IntegerField(default=0)
    # Submitted when the centre stopped: it may have gone. Sent again, it counts `resent`.
    doubt = models.BooleanField(default=False)
    resent = models.IntegerField(default=0)
    not_before = models.DateTimeField(null=True, blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["message_id", "idx"]
        constraints = [models.UniqueConstraint(fields=["message", "idx"],
                                               name="sms_part_once")]


class HealthReport(models.Model):
    """One health report a station sent (`…/health`), kept `telemetry.KEEP` (7 days)."""

    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="health_reports")
    ts = models.CharField(max_length=40)  # the station's clock: see data["clock_synced"]
    received_at = models.DateTimeField()
    data = models.JSONField(default=dict)

    class Meta:
        ordering = ["-received_at"]
        indexes = [models.Index(fields=["station", "received_at"])]


class HealthLatest(models.Model):
    """The newest health report of each station: what the station grid shows."""

    station = models.OneToOneField(Station, on_delete=models.CASCADE, primary_key=True,
                                   related_name="health_latest")
    ts = models.CharField(max_length=40)
    received_at = models.DateTimeField()
    data = models.JSONField(default=dict)


class StationGroup(models.Model):
    """A named set of stations a broadcast can go to, e.g. "river villages" (issue 23)."""

    name = models.CharField(_("group name"), max_length=100, unique=True)
    stations = models.ManyToManyField(Station, related_name="groups", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Broadcast(models.Model):
    """What the township said to its loudspeakers, and to whom (issue 23). Each station
    gets one `broadcast.play` Command with id `bc:<id>:<station>`; its results are that
    command's `cmd.result` and the `audio.playback` events carrying its id."""

    id = models.CharField(max_length=16, primary_key=True)
    kind = models.CharField(max_length=8)  # text | clip | tone
    text = models.TextField(blank=True, default="")
    tone = models.CharField(max_length=10, blank=True, default="")
    clip = models.BinaryField(null=True, blank=True)
    clip_name = models.CharField(max_length=200, blank=True, default="")
    clip_type = models.CharField(max_length=100, blank=True, default="")
    # A recording from the clip library (cliplib): played by its id where the station
    # holds it, sent to the others through the library first.
    library_clip = models.CharField(max_length=20, blank=True, default="")
    repeat = models.IntegerField(default=1)
    volume = models.FloatField(null=True, blank=True)
    priority = models.CharField(max_length=10, default="normal")
    not_before = models.DateTimeField(null=True, blank=True)
    expires = models.DateTimeField(null=True, blank=True)
    target = models.CharField(max_length=200)  # all | village:X | group:X | stations
    by = models.CharField(max_length=150)
    created_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    stopped_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]


class Clip(models.Model):
    """A recording in the township's clip library (issue 23): checked with libsndfile at
    upload, sent to stations in `clip.put` chunks. Its id is also its id on the stations
    (`lib-` and the first 12 hex digits of its sha256): the same file is one clip."""

    id = models.CharField(max_length=20, primary_key=True)
    name = models.CharField(_("name"), max_length=200)
    filename = models.CharField(max_length=200, blank=True, default="")
    content_type = models.CharField(max_length=100, blank=True, default="")
    data = models.BinaryField()
    size = models.IntegerField()
    sha256 = models.CharField(max_length=64)
    format = models.CharField(max_length=16)  # WAV | MP3 | OGG | FLAC, as libsndfile read it
    duration_s = models.FloatField()
    by = models.CharField(max_length=150)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]

    @property
    def chunks(self) -> int:
        from pingan_centre.console.cliplib import CHUNK_BYTES

        return (self.size + CHUNK_BYTES - 1) // CHUNK_BYTES


class ClipCopy(models.Model):
    """One library clip at one station: what the console sent it and what it answered.
    The chunks of attempt N have the command ids `cl:<clip>:<N>:<chunk>`; `acked` counts
    the chunks of the current attempt the station has stored."""

    class State(models.TextChoices):
        SENDING = "sending"
        COMPLETE = "complete"
        FAILED = "failed"
        DELETING = "deleting"
        DELETED = "deleted"

    clip = models.ForeignKey(Clip, on_delete=models.CASCADE, related_name="copies")
    station = models.ForeignKey(Station, on_delete=models.CASCADE, related_name="clip_copies")
    state = models.CharField(max_length=10, choices=State.choices)
    attempt = models.IntegerField(default=0)
    acked = models.IntegerField(default=0)
    sent = models.IntegerField(default=0)  # chunks of the current attempt published
    restarts = models.IntegerField(default=0)  # by the console itself, since the officer's
    # The station's last refusal, as it sent it: {code, message: {zh, en}}.
    error = models.JSONField(null=True, blank=True)
    by = models.CharField(max_length=150)
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField()  # the last progress: a chunk stored, a restart

    class Meta:
        constraints = [models.UniqueConstraint(fields=["clip", "station"],
                                               name="one_copy_per_station")]


class Schedule(models.Model):
    """A recurring broadcast the township keeps on its stations (issue 23): one
    `schedule.set` per target station, with this id as the station's `schedule_id` (and
    `clip_id` for a recording). Commands are `ss:<id>.<version>:<station>` (clears
    `sx:…`); `version` counts the pushes. The targets are resolved when pushed and when
    drift is shown, so a station added to a group later shows as missing the schedule."""

    id = models.CharField(max_length=16, primary_key=True)
    name = models.CharField(_("schedule name"), max_length=100)
    cron = models.CharField(max_length=128)
    kind = models.CharField(max_length=8)  # text | clip | tone
    text = models.TextField(blank=True, default="")
    tone = models.CharField(max_length=10, blank=True, default="")
    clip = models.BinaryField(null=True, blank=True)
    clip_name = models.CharField(max_length=200, blank=True, default="")
    clip_type = models.CharField(max_length=100, blank=True, default="")
    repeat = models.IntegerField(default=1)
    volume = models.FloatField(null=True, blank=True)
    target = models.CharField(max_length=200)  # all | village:X | group:X | stations
    chosen = models.JSONField(default=list, blank=True)  # the stations of "stations"
    version = models.IntegerField(default=0)
    by = models.CharField(max_length=150)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class CapImport(models.Model):
    """One CAP 1.2 message the console was given (issue 23 item 6): uploaded by an officer
    or dropped into the watched folder, and what it did. An Alert or Update that plays is
    a Broadcast like any other (`broadcast`); an Update or Cancel lists the broadcasts it
    stopped (`stopped`). Rejected and ignored messages are kept too, with the reason."""

    class Outcome(models.TextChoices):
        BROADCAST = "broadcast", _("broadcast")
        CANCELLED = "cancelled", _("cancelled")
        IGNORED = "ignored", _("not played")
        REJECTED = "rejected", _("rejected")

    received_at = models.DateTimeField(db_index=True)
    by = models.CharField(max_length=150)  # the officer, or "cap-folder"
    source = models.CharField(max_length=300, blank=True, default="")  # the file's name
    # The message's key (CAP `references` name it): empty when it could not be read.
    sender = models.CharField(max_length=250, blank=True, default="")
    identifier = models.CharField(max_length=250, blank=True, default="")
    sent = models.CharField(max_length=40, blank=True, default="")  # as the message wrote it
    sent_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, blank=True, default="")
    msg_type = models.CharField(max_length=10, blank=True, default="")
    severity = models.CharField(max_length=10, blank=True, default="")
    drill = models.BooleanField(default=False)  # status Exercise or Test
    text = models.TextField(blank=True, default="")  # what the stations speak
    text_en = models.TextField(blank=True, default="")  # the English info, kept
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.TextField(blank=True, default="")  # words.both(zh, en)
    detail = models.TextField(blank=True, default="")  # technical, language-neutral
    broadcast = models.ForeignKey(Broadcast, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="cap_imports")
    stopped = models.JSONField(default=list, blank=True)  # broadcast ids this one stopped
    xml = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["sender", "identifier"])]
