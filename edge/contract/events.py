"""The event model: every shape that crosses MQTT, defined once.

Events are published on `…/events` (and `cmd.result` on `…/cmd/result`); the JSON
Schemas in docs/schema/ are generated from these classes (`python -m edge.contract.schema`).
"""

from __future__ import annotations

import os
import threading
import time
from enum import IntEnum
from typing import Annotated, Any, Literal

import msgspec

from edge.clock import clock_synced, now_iso

# Every identifier a station sends is matched in full against a documented pattern: the
# township stores it, puts it in URLs and HTML ids, and a `/` or a newline in one broke
# the duty screen (issue 19). `$(?!\n)`: Python's `$` also matches before a final newline.
EventId = Annotated[str, msgspec.Meta(
    min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$(?!\n)")]
# A station or township id: the same rule as station.toml's (edge.config.Id).
StationId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$(?!\n)")]
# ISO 8601 with a zone, as edge.clock.now_iso writes it (the township stores 40 characters).
Timestamp = Annotated[str, msgspec.Meta(
    max_length=40,
    pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
            r"(Z|[+-][0-9]{2}:[0-9]{2})$(?!\n)")]
# A machine-readable code (a problem's, a status's): lower case, digits, `_ . -`.
Code = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$(?!\n)")]
Version = Annotated[str, msgspec.Meta(max_length=40)]


class Priority(IntEnum):
    """Drain order: lower drains first. Eviction takes the highest number first."""

    ALARM = 0
    COMMAND = 1
    NORMAL = 2
    TELEMETRY = 3


class _Shape(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Text(_Shape):
    """What a person reads: Simplified Chinese first, English available."""

    zh: str
    en: str


class EventBase(_Shape, tag_field="type", kw_only=True):
    id: EventId
    station: StationId
    township: StationId
    # Per-station sequence number, assigned when the outbox commits the event.
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)]
    # The station's clock: shown as unreliable while `clock_synced` is false. The
    # township orders what a station sends by arrival, never by this.
    ts: Timestamp
    clock_synced: bool


class PanicPayload(_Shape):
    source: Literal["button", "simulator", "selftest"]
    held_s: Annotated[float, msgspec.Meta(ge=0)]


class AlarmPanic(EventBase, tag="alarm.panic", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.ALARM
    payload: PanicPayload


class ButtonPayload(_Shape):
    button: Literal["broadcast"]
    source: Literal["button", "simulator", "selftest"]
    held_s: Annotated[float, msgspec.Meta(ge=0)]


class ButtonBroadcast(EventBase, tag="button.broadcast", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.NORMAL
    payload: ButtonPayload


class StatusPayload(_Shape):
    code: Code
    level: Literal["info", "warning", "error"]
    message: Text
    detail: dict[str, Any] = {}


class Status(EventBase, tag="status", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.TELEMETRY
    payload: StatusPayload


class ErrorInfo(_Shape):
    code: Literal[
        "malformed_json", "too_large", "invalid_command", "unknown_command",
        "unknown_event", "internal_error",
        # The command queue was full / the station stopped before running it: not run.
        "busy", "stopping",
        # The loudspeaker (edge/audio/).
        "unknown_clip", "clip_rejected", "expired", "quiet_hours", "audio_unavailable",
        "tts_failed", "unknown_schedule",
        # A clip.put chunk for an upload the station does not have in hand (it restarted,
        # or an earlier chunk failed): send the clip again from chunk 0.
        "clip_interrupted",
        # schedule.set of a new schedule_id while SCHEDULES_MAX are stored.
        "too_many_schedules",
    ]
    message: Text


class CmdResultPayload(_Shape):
    cmd_id: str | None
    cmd: str | None
    ok: bool
    error: ErrorInfo | None = None
    detail: dict[str, Any] = {}


class CmdResult(EventBase, tag="cmd.result", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.COMMAND
    payload: CmdResultPayload


class AudioPayload(_Shape):
    """One step in the life of something the loudspeaker sounds."""

    phase: Literal["started", "finished", "preempted", "resumed", "stopped", "failed",
                   "skipped"]
    # The playback's id: the command id for township broadcasts, else a local id.
    play_id: str
    origin: Literal["siren", "township", "ptt", "schedule", "prompt"]
    # siren > emergency > ptt > normal > scheduled > prompt
    level: Literal["siren", "emergency", "ptt", "normal", "scheduled", "prompt"]
    sound: str  # "clip:<id>", "text", "tone:<name>", "live", "prompt:<name>"
    cmd_id: str | None = None
    schedule_id: str | None = None
    # preempted: the play_id that cut in; failed/skipped: why.
    by: str | None = None
    reason: Text | None = None
    played_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class AudioPlayback(EventBase, tag="audio.playback", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.NORMAL
    payload: AudioPayload



class VoicePayload(_Shape):
    """Live speech from the township (edge/audio/voice.py) at this loudspeaker: `started`
    when the first of it sounds, `underrun` (at most once a second while they happen)
    when the jitter buffer ran dry, then `finished` (the officer let go and it played,
    or nothing came for a while), `preempted` (a siren or an emergency cut in: live
    speech does not resume) or `failed`. The counters are the session's so far."""

    phase: Literal["started", "underrun", "finished", "preempted", "failed"]
    session: str
    by: str = ""
    packets: Annotated[int, msgspec.Meta(ge=0)] = 0  # received
    lost: Annotated[int, msgspec.Meta(ge=0)] = 0  # gaps in the packets' seq
    # Audio thrown away: it came after its time, or the buffer held more than
    # audio.voice_max_ms (the station fell behind: it drops rather than delays).
    dropped_ms: Annotated[int, msgspec.Meta(ge=0)] = 0
    underruns: Annotated[int, msgspec.Meta(ge=0)] = 0
    played_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Capture (the officer's clock) → handed to the sound device (this station's clock),
    # over the blocks played so far; None until one played or when the clocks disagree.
    delay_ms_p50: int | None = None
    delay_ms_p95: int | None = None
    reason: Text | None = None


class AudioVoice(EventBase, tag="audio.voice", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.NORMAL
    payload: VoicePayload


Norm = Annotated[float, msgspec.Meta(ge=0, le=1)]


class CameraPersonPayload(_Shape):
    score: Norm
    # (xmin, ymin, xmax, ymax), normalised to the whole frame; (0, 0) is top left.
    box: tuple[Norm, Norm, Norm, Norm]
    zone: str
    # The whole frame with the box drawn, JPEG, base64; capped by camera.snapshot_max_bytes.
    snapshot_jpeg: str


class CameraPerson(EventBase, tag="camera.person", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.NORMAL
    payload: CameraPersonPayload


class SelftestResult(_Shape):
    # alarm_led, panic_button, broadcast_button, loudspeaker, microphone, camera, broker,
    # certificate, clock, disk, power, modem (more may come).
    check: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    status: Literal["pass", "fail", "not_fitted"]
    detail: Annotated[str, msgspec.Meta(max_length=500)] = ""


class SelftestPayload(_Shape):
    """`pingan-edge selftest` on site: every check and whether all passed."""

    passed: bool
    # Who ran it (the login on the unit).
    by: Annotated[str, msgspec.Meta(max_length=64)]
    results: list[SelftestResult]


class Selftest(EventBase, tag="selftest", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.NORMAL
    payload: SelftestPayload


SmsStatus = Literal["queued", "submitted", "delivered", "failed", "held_back", "unknown"]


class SmsRecipient(_Shape):
    number: str
    # queued (parts still to go, retried after temporary errors and restarts) →
    # submitted (every part accepted by the network) → delivered / failed (delivery
    # reports, a permanent error, or 24 h without success); held_back: over the SMS rate
    # limit, not sent; unknown: a station before per-part state restarted mid-send.
    status: SmsStatus
    parts: Annotated[int, msgspec.Meta(ge=1, le=255)]
    submitted_at: str | None = None
    reported_at: str | None = None
    # The last error (while not yet submitted, or why it failed).
    error: str | None = None
    parts_accepted: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    parts_delivered: Annotated[int, msgspec.Meta(ge=0, le=255)] = 0
    # AT+CMGS tries in all: more than `parts` after a temporary error or a restart.
    attempts: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Parts sent again after the station lost track of them (stopped or killed, or the
    # modem failed, while the part was at the modem): the officer may have these twice.
    resent: Annotated[int, msgspec.Meta(ge=0)] = 0


class AlarmSmsPayload(_Shape):
    """The alarm `alarm_id` was also sent by SMS (uplink down): to whom, and how it went."""

    alarm_id: EventId
    # What the SMS told the officer to quote.
    code: str
    recipients: list[SmsRecipient]


class AlarmSms(EventBase, tag="alarm.sms", kw_only=True):
    # After every alarm, before other events; kept when the outbox evicts.
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.COMMAND
    payload: AlarmSmsPayload


class UpdatePayload(_Shape):
    """One step of an update (edge/update/): offered → downloading (percent) → verified →
    installed → (waiting, with why) → rebooting → committed; or refused / failed /
    rolled_back, with why."""

    # The release this is about, and the one the unit ran when it happened.
    version: str
    running: str
    # The township's update.offer id; None for `pingan-edge update apply` on site.
    cmd_id: str | None = None
    source: Literal["township", "on_site"] = "township"
    percent: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    bytes: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # refused/failed/rolled_back: a code to count (wrong_key, hash_mismatch, truncated,
    # downgrade, already_running, bad_signature, incompatible, data_schema, busy,
    # download_failed, install_failed, unhealthy, crashed) and what a person reads.
    # waiting: why the reboot waits (alarm_open, alarm_undelivered, siren).
    code: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    reason: Text | None = None
    # committed/rolled_back: the checks behind the decision.
    checks: dict[str, bool] = {}


class _UpdateEvent(EventBase, kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.NORMAL
    payload: UpdatePayload


class UpdateOffered(_UpdateEvent, tag="update.offered", kw_only=True):
    pass


class UpdateDownloading(_UpdateEvent, tag="update.downloading", kw_only=True):
    priority: Annotated[int, msgspec.Meta(ge=0, le=3)] = Priority.TELEMETRY


class UpdateVerified(_UpdateEvent, tag="update.verified", kw_only=True):
    pass


class UpdateInstalled(_UpdateEvent, tag="update.installed", kw_only=True):
    pass


class UpdateWaiting(_UpdateEvent, tag="update.waiting", kw_only=True):
    """Installed, and the reboot waits (an alarm open, the siren sounding): sent once
    as the wait begins, with `code` and `reason`."""


class UpdateRebooting(_UpdateEvent, tag="update.rebooting", kw_only=True):
    pass


class UpdateCommitted(_UpdateEvent, tag="update.committed", kw_only=True):
    pass


class UpdateRolledBack(_UpdateEvent, tag="update.rolled_back", kw_only=True):
    pass


class UpdateRefused(_UpdateEvent, tag="update.refused", kw_only=True):
    pass


class UpdateFailed(_UpdateEvent, tag="update.failed", kw_only=True):
    pass


UpdateEvent = (UpdateOffered | UpdateDownloading | UpdateVerified | UpdateInstalled
               | UpdateWaiting | UpdateRebooting | UpdateCommitted | UpdateRolledBack
               | UpdateRefused | UpdateFailed)
UPDATE_EVENTS: dict[str, type[_UpdateEvent]] = {
    str(cls.__struct_config__.tag): cls for cls in (
        UpdateOffered, UpdateDownloading, UpdateVerified, UpdateInstalled, UpdateWaiting,
        UpdateRebooting, UpdateCommitted, UpdateRolledBack, UpdateRefused, UpdateFailed)}

Event = (AlarmPanic | ButtonBroadcast | Status | CmdResult | AudioPlayback | AudioVoice
         | CameraPerson
         | AlarmSms | Selftest | UpdateOffered | UpdateDownloading | UpdateVerified
         | UpdateInstalled | UpdateWaiting | UpdateRebooting | UpdateCommitted
         | UpdateRolledBack | UpdateRefused | UpdateFailed)


ClipId = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$(?!\n)")]
ShortSha = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$(?!\n)")]


class Problem(_Shape):
    code: Code
    message: Text
    since: Timestamp
    # Machine-readable figures behind the message (e.g. `outbox_corrupt`'s counts).
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


# Schedules a station keeps (schedule.set of a new id past this is refused): bounds
# audio.db and the state topic that lists them.
SCHEDULES_MAX = 64


class ScheduleDigest(_Shape):
    """One stored schedule as the state reports it: its id, its cron, and a digest of
    everything it does (edge.contract.commands.ScheduleSet.digest), so the township can
    tell a schedule that differs from the one it pushed without the whole of it."""

    schedule_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    cron: Annotated[str, msgspec.Meta(max_length=128)]
    digest: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{16}$(?!\n)")]


class StationState(_Shape):
    """Retained on `…/state`; the Last Will carries the same shape with online=false."""

    station: StationId
    township: StationId
    online: bool
    version: Version
    # When the station published this state. None in the Last Will: the broker sends that
    # when the station vanished, at a time the station could not know when it set it.
    ts: Timestamp | None
    clock_synced: bool
    # Events not yet delivered (the township keeps a 32-bit integer).
    pending: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    problems: list[Problem] = []
    # Running totals since start (e.g. camera_motion_without_person), see Health.count.
    counters: dict[str, int] = {}
    # The station's own name (station.toml's [station] name), shown on the duty cards
    # beside the village; "" from stations before issue 19.
    name: Annotated[str, msgspec.Meta(max_length=100)] = ""
    # The clip library (issue 23): each complete clip's id and the first 16 hex digits of
    # its sha256. At most audio.clips_max (≤ 1000) entries; republished when it changes.
    # None: the station has no loudspeaker, or predates the field.
    clips: Annotated[dict[ClipId, ShortSha], msgspec.Meta(max_length=1000)] | None = None
    # The loudspeaker's stored schedules, by id; None: not reported (the Last Will, a
    # station without a loudspeaker, or one from before issue 23).
    schedules: Annotated[list[ScheduleDigest],
                         msgspec.Meta(max_length=SCHEDULES_MAX)] | None = None


class ModemReport(_Shape):
    """What the modem said about itself, validated and bounded (pingan_modem/signal.py)."""

    state: Literal["starting", "ok", "absent", "sim_locked", "silent"]
    model: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    iccid: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{18,22}$")] | None = None
    # Registration: the better of +CREG and +CEREG.
    reg: Literal["home", "roaming", "searching", "denied", "unknown", "none"] | None = None
    # 27.007 +COPS forms: long (≤ 24 printable), short, or numeric MCC+MNC.
    operator: Annotated[str, msgspec.Meta(max_length=24)] | None = None
    tech: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    csq_dbm: int | None = None
    rsrp: float | None = None
    rsrq: float | None = None
    sinr: float | None = None


class HealthReport(_Shape):
    """Retained on `…/health`, every `health.interval_s`."""

    station: str
    township: str
    ts: str
    version: str
    clock_synced: bool
    uptime_s: Annotated[int, msgspec.Meta(ge=0)]
    cpu_temp_c: float | None
    load1: float
    mem_avail_mb: int
    disk_free_mb: int
    outbox_pending: int
    outbox_oldest_s: int | None
    reconnects: int
    # The firmware's get_throttled bits (bit 0 under-voltage now, 2 throttled now,
    # 16 under-voltage has occurred, 18 throttled has occurred); null off a Pi.
    throttled: int | None
    modem: ModemReport | None
    sms_held_back: int = 0
    # Size of the data directory's file system (null from a station older than this
    # field): with disk_free_mb, the township's "disk under 10 %".
    disk_total_mb: int | None = None


_id_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Kernel randomness fetched a page at a time: each os.urandom call lets go of the GIL,
# which on the alarm path hands it to another thread for a while.
_RANDOM_PAGE = 4096
_random = memoryview(b"")


def _random_bytes(n: int) -> bytes:
    """`n` bytes from os.urandom, taken from a page of them (call with _id_lock held)."""
    global _random
    if len(_random) < n:
        _random = memoryview(os.urandom(_RANDOM_PAGE))
    taken, _random = _random[:n], _random[n:]
    return bytes(taken)


def new_event_id() -> str:
    """A UUIDv7: unix-ms timestamp first, so ids sort by creation time.

    Within one millisecond a counter in the 12 `rand_a` bits keeps ids increasing.
    """
    global _last_ms, _counter
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms, _counter = ms, 0
        rand_b = int.from_bytes(_random_bytes(8)) & ((1 << 62) - 1)
        value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | rand_b
    h = f"{value:032x}"  # uuid.UUID's str, without building the object
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def stamp() -> dict[str, Any]:
    """The fields every new event takes from the moment it is made."""
    return {"id": new_event_id(), "ts": now_iso(), "clock_synced": clock_synced()}


def text(zh: str, en: str) -> Text:
    return Text(zh=zh, en=en)


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_event(data: bytes) -> Event:
    event: Event = _event_decoder.decode(data)
    return event
