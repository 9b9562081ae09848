"""Station configuration: one TOML file, validated at start.

Every value has a default except the station's identity. A wrong value raises
`ConfigError` naming the key, the bad value and what is allowed; `main` turns it
into exit status 2.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

# `$(?!\n)`: Python's `$` also matches before a trailing newline, and `v001\n` must not
# pass (JSON Schema's ECMA regexes read the lookahead the same way).
Id = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$(?!\n)")]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]
Pin = Annotated[int, msgspec.Meta(ge=0, le=53)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


# One text rendered to speech (FLAC at the engine's rate; 2,000 characters of Mandarin
# are ~10 MB). A longer rendering is refused.
TTS_RENDER_MAX_BYTES = 16 << 20
# How much lower than the station's own the CPU priority of background work (township
# commands, rendering speech) is: on two cores the alarm path comes first.
BACKGROUND_NICE = 10
# The data directory's small files: databases' WAL, the audio settings, lock, socket.
DATA_MARGIN_BYTES = 16 << 20


class ConfigError(ValueError):
    """The station configuration is unusable; the message says which key and why."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class StationSection(_Section):
    id: Id
    township: Id
    name: str = ""
    # The village, as officers know it (in alarm SMS).
    village: str = ""
    # Empty means: $STATE_DIRECTORY (systemd), else the user's XDG state directory.
    data_dir: str = ""
    # What the data directory may hold at most: the sum of the caps of what is kept there
    # (outbox.max_bytes, the clips, the TTS cache, broadcasts waiting) must fit in it.
    data_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 512 << 20


class BrokerSection(_Section):
    host: str = "127.0.0.1"
    port: Port = 1883
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=1200)] = 30
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    # Read from $CREDENTIALS_DIRECTORY/<name> when relative and that directory is set.
    password_file: str = ""
    # Read by the simulator (`pingan-sim run`) only: start a private mosquitto when the
    # broker cannot be reached. The unit itself never starts a broker.
    local_fallback: bool = False


class UplinkSection(_Section):
    inflight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    backoff_min_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 0.5
    backoff_max_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 60.0
    max_command_bytes: Annotated[int, msgspec.Meta(ge=256, le=1 << 20)] = 16384
    # Township commands waiting for the command worker; one more is answered `busy`.
    command_queue: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    state_interval_s: Annotated[float, msgspec.Meta(ge=5, le=86400)] = 300.0
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0, le=7 * 86400)] = 86400


class OutboxSection(_Section):
    max_bytes: Annotated[int, msgspec.Meta(ge=16384)] = 64 * 1024 * 1024
    keep_delivered: Annotated[int, msgspec.Meta(ge=0)] = 10000
    batch_max: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 500


class PinsSection(_Section):
    factory: Literal["mock", "lgpio", "rpigpio", "pigpio", "native"] = "lgpio"
    panic: Pin = 17
    broadcast: Pin = 27
    alarm_led: Pin = 22
    # The loudspeaker amplifier's power relay (see [audio]).
    amp_relay: Pin = 23
    # The 4G modem's power relay (see [modem]): energised = modem supply cut.
    modem_power: Pin = 24
    # Buttons wired between the pin and ground, with the internal pull-up.
    pull_up: bool = True


class ButtonsSection(_Section):
    panic_hold_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.3
    broadcast_hold_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.0
    bounce_s: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.02


class IndicatorSection(_Section):
    ack_display_s: Seconds = 600.0


class ControlSection(_Section):
    # Empty means <data_dir>/control.sock.
    socket: str = ""


# "HH:MM", or empty for none.
OptionalClockTime = Annotated[str, msgspec.Meta(
    pattern=r"^(|([01][0-9]|2[0-3]):[0-5][0-9])$(?!\n)")]


class AudioSection(_Section):
    """The ping'an loudspeaker (edge/audio/)."""

    enabled: bool = True
    # "device": PortAudio's device named by `device` ("" = the default device, a name
    # fragment, or an index). "null": PortAudio through an ALSA null device that records
    # to <data_dir>/speaker.raw (S16_LE mono at sample_rate) - the simulator's speaker.
    output: Literal["device", "null"] = "device"
    device: str | Annotated[int, msgspec.Meta(ge=0, le=255)] = ""
    mic_device: str | Annotated[int, msgspec.Meta(ge=0, le=255)] = ""
    sample_rate: Annotated[int, msgspec.Meta(ge=8000, le=48000)] = 22050
    block_ms: Annotated[int, msgspec.Meta(ge=5, le=100)] = 20
    # At most this much audio is queued ahead in the device, so a preemption cuts in fast.
    lead_ms: Annotated[int, msgspec.Meta(ge=10, le=1000)] = 60
    volume: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.8
    # The local panic siren; false = silent alarm: no siren and no spoken alarm prompts,
    # the township is still paged.
    siren: bool = True
    siren_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 30.0
    siren_volume: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    # Spoken prompts for staff (alarm saved / sent / received, link down).
    prompts: bool = True
    tts_engine: Literal["espeak-ng"] = "espeak-ng"
    tts_voice: Annotated[str, msgspec.Meta(
        pattern=r"^[A-Za-z0-9_+-]{1,64}$(?!\n)")] = "cmn-latn-pinyin"
    amp_warm_up_s: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.2
    amp_idle_off_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0
    clip_max_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 << 20)] = 8 << 20
    # Every clip together (uploads in progress included), and how many: a full library
    # refuses a new clip until one is deleted; clips are never dropped by themselves.
    clips_total_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 64 << 20
    clips_max: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 64
    # Texts rendered for schedules and prompts, kept on disk; least recently used out.
    tts_cache_bytes: Annotated[int, msgspec.Meta(ge=1 << 20, le=1 << 30)] = 64 << 20
    tts_cache_entries: Annotated[int, msgspec.Meta(ge=4, le=10000)] = 64
    # Township and scheduled broadcasts waiting to play; one more is refused `busy`.
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    # Live speech from the township (edge/audio/voice.py): it starts once this much is
    # buffered (the jitter buffer), and never holds more than voice_max_ms: a station
    # that falls behind drops the oldest audio rather than speak ever later.
    voice_jitter_ms: Annotated[int, msgspec.Meta(ge=20, le=1000)] = 120
    voice_max_ms: Annotated[int, msgspec.Meta(ge=60, le=3000)] = 400
    # Local wall-clock "HH:MM"; both empty = no quiet hours. Emergencies override them.
    quiet_start: OptionalClockTime = ""
    quiet_end: OptionalClockTime = ""
    timezone: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "Asia/Shanghai"


Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]
# A polygon in normalised frame coordinates: [[x, y], ...], (0, 0) top left, (1, 1) bottom right.
Polygon = Annotated[list[tuple[Unit, Unit]], msgspec.Meta(min_length=3, max_length=64)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$(?!\n)")]


class CameraZone(_Section):
    name: Id
    polygon: Polygon


class ArmWindow(_Section):
    """Armed from `start` to `end`, local wall time ("22:00"-"06:00" spans midnight)."""

    start: ClockTime
    end: ClockTime


class CameraSection(_Section):
    enabled: bool = False
    source: Literal["v4l2", "rtsp", "picamera2", "folder"] = "v4l2"
    device: Annotated[int, msgspec.Meta(ge=0, le=63)] = 0
    url: str = ""
    # A folder of images (replayed in name order) or a video file (source = "folder").
    path: str = ""
    loop: bool = False
    fps: Annotated[float, msgspec.Meta(ge=0.5, le=30)] = 5.0
    width: Annotated[int, msgspec.Meta(ge=160, le=3840)] = 640
    height: Annotated[int, msgspec.Meta(ge=120, le=2160)] = 480
    retry_min_s: Annotated[float, msgspec.Meta(ge=0.05, le=60)] = 1.0
    retry_max_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 60.0
    # Motion, on a grey frame scaled down to motion_width pixels wide.
    motion_width: Annotated[int, msgspec.Meta(ge=64, le=640)] = 160
    motion_threshold: Annotated[int, msgspec.Meta(ge=1, le=255)] = 25
    motion_min_area: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.001
    # More than this fraction of the frame changing at once is a light change
    # (cloud, IR day/night switch), not motion: the background is re-learned.
    light_change_area: Annotated[float, msgspec.Meta(ge=0.05, le=1)] = 0.5
    background_alpha: Annotated[float, msgspec.Meta(ge=0.001, le=1)] = 0.05
    masks: Annotated[list[Polygon], msgspec.Meta(max_length=32)] = []
    # Empty: the whole frame is one zone named "frame".
    zones: Annotated[list[CameraZone], msgspec.Meta(max_length=32)] = []
    # Detector. Empty model: the bundled models/person_ssdlite.tflite.
    model: str = ""
    labels: str = ""
    label: str = "person"
    threads: Annotated[int, msgspec.Meta(ge=1, le=4)] = 1
    score_threshold: Annotated[float, msgspec.Meta(ge=0.05, le=0.99)] = 0.5
    crop_margin: Annotated[float, msgspec.Meta(ge=1.0, le=4.0)] = 1.6
    max_regions: Annotated[int, msgspec.Meta(ge=1, le=8)] = 2
    # Events: a new camera.person only after cooldown_s without a person.
    cooldown_s: Seconds = 60.0
    snapshot_max_bytes: Annotated[int, msgspec.Meta(ge=4096, le=262144)] = 65536
    # Empty: armed all day. Township commands camera.arm / camera.disarm override it.
    schedule: Annotated[list[ArmWindow], msgspec.Meta(max_length=16)] = []


PhoneNumber = Annotated[str, msgspec.Meta(pattern=r"^\+?[0-9]{3,20}$")]


class ModemSection(_Section):
    """The 4G modem (edge/modem/): SMS fallback for alarms, signal for the health topic."""

    enabled: bool = False
    # A pyserial URL: a device path, or e.g. rfc2217://host:port.
    port: str = "/dev/ttyUSB2"
    baudrate: Annotated[int, msgspec.Meta(ge=1200, le=4000000)] = 115200
    command_timeout_s: Annotated[float, msgspec.Meta(ge=0.2, le=60)] = 5.0
    sms_timeout_s: Annotated[float, msgspec.Meta(ge=1, le=300)] = 60.0
    poll_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    rdy_timeout_s: Annotated[float, msgspec.Meta(ge=0.5, le=300)] = 30.0
    power_off_s: Annotated[float, msgspec.Meta(ge=0.1, le=60)] = 3.0
    retry_max_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 600.0
    # Whether pins.modem_power drives a relay in the modem's supply.
    power_relay: bool = False
    # An alarm still not delivered to the broker this long after it was raised, while
    # the uplink is down, goes by SMS to the duty numbers.
    sms_after_s: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 120.0
    duty_numbers: Annotated[list[PhoneNumber], msgspec.Meta(max_length=10)] = []
    # SMS parts (what the operator bills) per rolling hour and day, alarms and replies.
    sms_per_hour: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 20
    sms_per_day: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 60


class HealthSection(_Section):
    """Health telemetry on the retained …/health topic."""

    enabled: bool = True
    interval_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0


class UpdateSection(_Section):
    """Over-the-air updates (edge/update/): signed RAUC bundles into the other root slot."""

    enabled: bool = True
    # The release keys this unit trusts: put on the root at flash time, replaced only by a
    # release signed with a key already trusted (a keyring rotation).
    keyring: str = "/etc/rauc/keyring.pem"
    # The release this root slot holds (written by the image build); a machine without it
    # runs the station package's own version.
    release_file: str = "/etc/pingan-edge-release"
    # The new slot must pass every commit check within this, or the unit goes back.
    health_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 600.0
    # The pingan-edge selftest rows that need no person, run before the commit.
    commit_rows: list[Literal["certificate", "clock", "power"]] = msgspec.field(
        default_factory=lambda: ["certificate", "clock", "power"])
    # RAUC streams the bundle (range requests through edge/update/stream.py), fetching only
    # the blocks its adaptive update needs; off: the whole file is fetched, its sha256
    # checked, then installed (a RAUC built without streaming; the test rigs).
    stream: bool = True
    # The download's cap (bytes/s): 32,000 is 256 kbit/s, a quarter of a weak 4G uplink.
    rate_bytes_s: Annotated[int, msgspec.Meta(ge=1024, le=1 << 30)] = 32000
    max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 2 << 30
    retry_min_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] = 5.0
    retry_max_s: Annotated[float, msgspec.Meta(ge=0.1, le=86400)] = 600.0
    give_up_s: Annotated[float, msgspec.Meta(ge=1, le=7 * 86400)] = 24 * 3600.0
    timeout_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 60.0
    # How the unit reboots into the new slot once (the Pi firmware's one-shot tryboot):
    # the station is no root, so it asks pingan-edge-tryboot.path (systemd/) to.
    reboot_command: list[str] = msgspec.field(
        default_factory=lambda: ["touch", "/var/lib/pingan-edge/update/reboot-tryboot"])
    # How `pingan-edge update commit` (root) goes back to the committed slot after a
    # failed check: a plain reboot, without the tryboot flag.
    fallback_command: list[str] = msgspec.field(
        default_factory=lambda: ["systemctl", "reboot"])


class LogSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    station: StationSection
    broker: BrokerSection = msgspec.field(default_factory=BrokerSection)
    uplink: UplinkSection = msgspec.field(default_factory=UplinkSection)
    outbox: OutboxSection = msgspec.field(default_factory=OutboxSection)
    pins: PinsSection = msgspec.field(default_factory=PinsSection)
    buttons: ButtonsSection = msgspec.field(default_factory=ButtonsSection)
    indicator: IndicatorSection = msgspec.field(default_factory=IndicatorSection)
    control: ControlSection = msgspec.field(default_factory=ControlSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    audio: AudioSection = msgspec.field(default_factory=AudioSection)
    camera: CameraSection = msgspec.field(default_factory=CameraSection)
    modem: ModemSection = msgspec.field(default_factory=ModemSection)
    health: HealthSection = msgspec.field(default_factory=HealthSection)
    update: UpdateSection = msgspec.field(default_factory=UpdateSection)

    def __post_init__(self) -> None:
        if self.station.id == "all":
            raise ValueError("station.id 'all' is reserved for township-wide commands")
        if self.uplink.backoff_max_s < self.uplink.backoff_min_s:
            raise ValueError(
                f"uplink.backoff_max_s ({self.uplink.backoff_max_s}) must be >= "
                f"uplink.backoff_min_s ({self.uplink.backoff_min_s})"
            )
        if bool(self.broker.cert_file) != bool(self.broker.key_file):
            raise ValueError("broker.cert_file and broker.key_file must be given together")
        pins = {"panic": self.pins.panic, "broadcast": self.pins.broadcast,
                "alarm_led": self.pins.alarm_led, "amp_relay": self.pins.amp_relay,
                "modem_power": self.pins.modem_power}
        if len(set(pins.values())) != len(pins):
            raise ValueError(f"pins must be distinct, got {pins}")
        if bool(self.audio.quiet_start) != bool(self.audio.quiet_end):
            raise ValueError("audio.quiet_start and audio.quiet_end must be given together")
        try:
            zoneinfo.ZoneInfo(self.audio.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"audio.timezone: unknown time zone {self.audio.timezone!r}; "
                             f"use an IANA name such as 'Asia/Shanghai'") from exc
        parts = {"outbox.max_bytes": self.outbox.max_bytes, "files": DATA_MARGIN_BYTES}
        if self.audio.enabled:
            parts |= {"audio.clips_total_bytes": self.audio.clips_total_bytes,
                      "audio.tts_cache_bytes": self.audio.tts_cache_bytes,
                      "(audio.queue_max + 1) × TTS_RENDER_MAX_BYTES":
                          (self.audio.queue_max + 1) * TTS_RENDER_MAX_BYTES}
        if sum(parts.values()) > self.station.data_max_bytes:
            raise ValueError(
                f"station.data_max_bytes ({self.station.data_max_bytes}) is less than what "
                f"the data directory may hold: {parts} = {sum(parts.values())} bytes; "
                f"raise it or lower those caps")
        if self.update.retry_max_s < self.update.retry_min_s:
            raise ValueError(
                f"update.retry_max_s ({self.update.retry_max_s}) must be >= "
                f"update.retry_min_s ({self.update.retry_min_s})")
        if self.camera.retry_max_s < self.camera.retry_min_s:
            raise ValueError(
                f"camera.retry_max_s ({self.camera.retry_max_s}) must be >= "
                f"camera.retry_min_s ({self.camera.retry_min_s})"
            )
        if self.camera.enabled and self.camera.source == "rtsp" and not self.camera.url:
            raise ValueError("camera.url is required with camera.source = 'rtsp'")
        if self.camera.enabled and self.camera.source == "folder" and not self.camera.path:
            raise ValueError("camera.path is required with camera.source = 'folder'")

    @property
    def data_dir(self) -> Path:
        if self.station.data_dir:
            return Path(self.station.data_dir).expanduser()
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "pingan-edge" / self.station.id

    @property
    def control_socket(self) -> Path:
        return Path(self.control.socket) if self.control.socket else self.data_dir / "control.sock"

    def password(self) -> str | None:
        if not self.broker.password_file:
            return None
        path = Path(self.broker.password_file)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not path.is_absolute() and creds:
            path = Path(creds) / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"broker.password_file: cannot read {str(path)!r}: {exc.strerror}"
            ) from exc


# No config file anywhere: a developer's machine, not a unit (a unit has
# /etc/pingan-edge/station.toml). The station is the one `pingan-sim run` simulates, so
# that `pingan-edge press/status/tail` reach it without a config file either. Its
# township is the console's default (`pingan-centre serve` with no config: t01), so the
# two commands of the README meet.
NO_FILE_TOML = """
[station]
id = "sim-001"
township = "t01"
name = "模拟村 (simulated village)"
"""

_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    """Find the raw value a msgspec error path (like `.uplink.inflight`) points at."""
    node = raw
    for part in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+)\]", path):
        key, index = part
        try:
            node = node[key] if key else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def _explain(exc: Exception, raw: dict[str, Any]) -> str:
    text = str(exc)
    match = _PATH_RE.search(text)
    path = match.group("path") if match else ""
    reason = text[: match.start()] if match else text
    if "unknown field" in reason:
        field = reason.split("`")[1]
        section = _section_for(path)
        allowed = ", ".join(section.__struct_fields__) if section else "?"
        where = f"[{path.lstrip('.')}]" if path else "the top level"
        return f"unknown key {field!r} in {where}; allowed keys: {allowed}"
    if "missing required field" in reason:
        field = reason.split("`")[1]
        return f"{(path + '.' + field).lstrip('.')}: required, but missing"
    key = path.lstrip(".")
    found, value = _lookup(raw, path)
    allowed = _allowed(path)
    hint = f"; allowed: {allowed}" if allowed else ""
    return f"{key}: {reason}; got {value!r}{hint}" if found else f"{key}: {reason}"


def _section_for(path: str) -> type[msgspec.Struct] | None:
    if not path:
        return Config
    hints = typing.get_type_hints(Config)
    section = hints.get(path.lstrip(".").split(".")[0])
    return section if isinstance(section, type) else None


def _allowed(path: str) -> str:
    """The Literal choices of the field at `path`, for the error message."""
    parts = path.lstrip(".").split(".")
    section = _section_for("." + parts[0]) if len(parts) == 2 else None
    if section is None:
        return ""
    hint = typing.get_type_hints(section).get(parts[1])
    if typing.get_origin(hint) is Literal:
        return ", ".join(repr(a) for a in typing.get_args(hint))
    return ""


def parse(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc, raw)}") from exc


def load(path: Path | None) -> Config:
    """Load the config file, or the no-file station (NO_FILE_TOML) when `path` is None."""
    if path is None:
        return parse(NO_FILE_TOML, "<no config file>")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config is not UTF-8: {exc}") from exc
    return parse(text, str(path))
