"""Township commands: their shapes, and validation at the edge of the program.

Every payload that arrives on `…/cmd` or `pingan/v1/<township>/all/cmd` goes through
`parse()`: it returns a typed command or a `CommandRejected` with an error that is
answered on `…/cmd/result`. Nothing past this point sees unvalidated input.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from edge.contract import cron as cron_grammar
from edge.contract.events import ErrorInfo, EventId, Text, text
from edge.contract.release import COMPATIBLE, Release
from edge.contract.release import Version as ReleaseVersion

CmdId = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                    pattern=r"^[A-Za-z0-9._:-]+$(?!\n)")]


class CommandBase(msgspec.Struct, tag_field="cmd", forbid_unknown_fields=True, kw_only=True):
    id: CmdId
    # Who sent it (officer or service account), for the local log only.
    by: Annotated[str, msgspec.Meta(max_length=64)] = ""


class AlarmAck(CommandBase, tag="alarm.ack", kw_only=True):
    """The township has seen the alarm `event_id`: the station shows and says so."""

    event_id: EventId


class StateGet(CommandBase, tag="state.get", kw_only=True):
    """Republish the retained state now."""


# --- the loudspeaker (edge/audio/) -------------------------------------------------

# A clip or schedule id: also a file name on the unit, so no path separators, no leading dot.
AudioId = Annotated[str, msgspec.Meta(min_length=1, max_length=64,
                                      pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$(?!\n)")]
Volume = Annotated[float, msgspec.Meta(ge=0, le=1)]
Repeat = Annotated[int, msgspec.Meta(ge=1, le=50)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]
SpokenText = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Tone = Literal["siren", "chime"]
WallTime = Annotated[datetime, msgspec.Meta(tz=True)]


class _Sound(CommandBase, kw_only=True):
    """What to sound: exactly one of `clip`, `text` (spoken by the station's TTS) or `tone`."""

    clip: AudioId | None = None
    text: SpokenText | None = None
    tone: Tone | None = None
    repeat: Repeat = 1
    # None: the station's volume (volume.set).
    volume: Volume | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("clip", "text", "tone") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of clip, text, tone (got {given or 'none'})")


class BroadcastPlay(_Sound, tag="broadcast.play", kw_only=True):
    """Sound a clip, text or tone now (or from `not_before`); never after `expires`."""

    priority: Literal["normal", "emergency"] = "normal"
    not_before: WallTime | None = None
    expires: WallTime | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.not_before and self.expires and self.not_before >= self.expires:
            raise ValueError(f"not_before ({self.not_before.isoformat()}) is not before "
                             f"expires ({self.expires.isoformat()}): it could never play")


class BroadcastStop(CommandBase, tag="broadcast.stop", kw_only=True):
    """Stop the broadcast started by command `broadcast_id`, or (none) every township and
    scheduled broadcast, playing or queued. The panic siren ends with alarm.ack."""

    broadcast_id: CmdId | None = None


class ClipPut(CommandBase, tag="clip.put", kw_only=True):
    """One chunk of a clip upload. Chunks 0..chunks-1 in order; the clip becomes playable
    only when the last one arrives and the whole file matches `size` and `sha256`."""

    clip_id: AudioId
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=1)]
    chunk: Annotated[int, msgspec.Meta(ge=0)]
    chunks: Annotated[int, msgspec.Meta(ge=1, le=100000)]
    data: bytes  # base64 in JSON

    def __post_init__(self) -> None:
        if self.chunk >= self.chunks:
            raise ValueError(f"chunk {self.chunk} is past chunks = {self.chunks}")


class ClipDelete(CommandBase, tag="clip.delete", kw_only=True):
    clip_id: AudioId


class ScheduleSet(_Sound, tag="schedule.set", kw_only=True):
    """A recurring broadcast, stored on the unit: it runs while the link is down.
    `cron` is "minute hour day-of-month month day-of-week" in the station's time zone."""

    schedule_id: AudioId
    cron: Annotated[str, msgspec.Meta(min_length=9, max_length=128)]

    def digest(self) -> str:
        """What the station reports for it on its state (edge.contract.cron.digest); the
        township computes the same for what it pushed."""
        return cron_grammar.digest(cron=self.cron, clip=self.clip, text=self.text, tone=self.tone,
                           repeat=self.repeat, volume=self.volume)


class ScheduleClear(CommandBase, tag="schedule.clear", kw_only=True):
    """Remove schedule `schedule_id`, or (none) every schedule."""

    schedule_id: AudioId | None = None


class VolumeSet(CommandBase, tag="volume.set", kw_only=True):
    """The station's broadcast volume, kept across restarts (the siren has its own)."""

    volume: Volume


AudioCommand = (BroadcastPlay | BroadcastStop | ClipPut | ClipDelete | ScheduleSet
                | ScheduleClear | VolumeSet)


# --- the camera (edge/camera/) ---------------------------------------------------

class CameraArm(CommandBase, tag="camera.arm", kw_only=True):
    """Arm the camera now; `for_s` = 0 holds until the next change of camera.schedule."""

    for_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 0


class CameraDisarm(CommandBase, tag="camera.disarm", kw_only=True):
    """Disarm the camera now; `for_s` = 0 holds until the next change of camera.schedule."""

    for_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 0


CameraCommand = CameraArm | CameraDisarm

# --- updates (edge/update/) -------------------------------------------------------

class UpdateOffer(CommandBase, tag="update.offer", kw_only=True):
    """A release for this unit, as the signing PC described and signed it (the console
    passes it on; it never holds the key). The unit checks `signature` (DER CMS, base64,
    over edge.contract.release.canonical of the other fields) against the keyring it was
    flashed with, downloads `url` (the township's own HTTP server) with a bandwidth cap,
    resuming after a drop, checks `size` and `sha256`, installs into the other root slot
    and reboots into it once; `update.*` events say how it went."""

    version: ReleaseVersion
    url: Annotated[str, msgspec.Meta(min_length=8, max_length=2048,
                                     pattern=r"^https?://[^\s]+$(?!\n)")]
    size: Annotated[int, msgspec.Meta(ge=1, le=4 << 30)]
    sha256: Sha256
    min_data_schema: Annotated[int, msgspec.Meta(ge=1, le=1000)]
    # Set only by the signing PC for a release allowed to replace a newer one.
    rollback: bool = False
    compatible: Annotated[str, msgspec.Meta(max_length=64)] = COMPATIBLE
    signature: Annotated[bytes, msgspec.Meta(max_length=16384)]

    def release(self) -> Release:
        return Release(compatible=self.compatible, version=self.version, size=self.size,
                       sha256=self.sha256, min_data_schema=self.min_data_schema,
                       rollback=self.rollback)


Command = (AlarmAck | StateGet | BroadcastPlay | BroadcastStop | ClipPut | ClipDelete
           | ScheduleSet | ScheduleClear | VolumeSet | CameraArm | CameraDisarm | UpdateOffer)
KNOWN = {str(cls.__struct_config__.tag) for cls in (
    AlarmAck, StateGet, BroadcastPlay, BroadcastStop, ClipPut, ClipDelete, ScheduleSet,
    ScheduleClear, VolumeSet, CameraArm, CameraDisarm, UpdateOffer)}

_decoder = msgspec.json.Decoder()


class CommandRejected(Exception):
    def __init__(self, error: ErrorInfo, cmd_id: str | None, cmd: str | None) -> None:
        super().__init__(error.message.en)
        self.error = error
        self.cmd_id = cmd_id
        self.cmd = cmd


def tag(cmd: Command) -> str:
    """The command's name on the wire (`broadcast.play`)."""
    return str(type(cmd).__struct_config__.tag)


def rejected(cmd: Command, code: Any, message: Text) -> CommandRejected:
    """What a part raises to refuse a valid command; the command worker answers with it."""
    return CommandRejected(ErrorInfo(code=code, message=message), cmd.id, tag(cmd))


def _reject(code: Any, zh: str, en: str, raw: Any = None) -> CommandRejected:
    cmd_id = raw.get("id") if isinstance(raw, dict) else None
    cmd = raw.get("cmd") if isinstance(raw, dict) else None
    return CommandRejected(
        ErrorInfo(code=code, message=text(zh, en)),
        cmd_id if isinstance(cmd_id, str) and len(cmd_id) <= 64 else None,
        cmd if isinstance(cmd, str) and len(cmd) <= 64 else None,
    )


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _duplicate_key(payload: bytes) -> str | None:
    """The first key given twice in any object of `payload` (already valid JSON), if any.
    msgspec, like most decoders, silently keeps the last one."""
    try:
        json.loads(payload, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as dup:
        return str(dup.args[0])
    return None


def parse(payload: bytes, max_bytes: int) -> Command:
    """Validate one command payload; raise `CommandRejected` saying what is wrong."""
    if len(payload) > max_bytes:
        raise _reject("too_large", f"命令过大（{len(payload)} 字节，上限 {max_bytes}）",
                      f"command is {len(payload)} bytes, limit is {max_bytes}")
    try:
        raw = _decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise _reject("malformed_json", "命令不是有效的 JSON",
                      f"command is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise _reject("invalid_command", "命令必须是 JSON 对象", "command must be a JSON object")
    duplicated = _duplicate_key(payload)
    if duplicated is not None:
        raise _reject("invalid_command", f"命令中字段 {duplicated!r} 出现了两次",
                      f"key {duplicated!r} appears twice in the command: "
                      f"which one was meant is unknown", raw if duplicated != "id" else None)
    # isinstance first: an unhashable "cmd" (a list, an object) must not reach `in KNOWN`.
    if not isinstance(raw.get("cmd"), str) or raw["cmd"] not in KNOWN:
        known = ", ".join(sorted(KNOWN))
        raise _reject("unknown_command", f"未知命令 {raw.get('cmd')!r}，可用：{known}",
                      f"unknown command {raw.get('cmd')!r}; known: {known}", raw)
    try:
        command: Command = msgspec.convert(raw, Command)
        return command
    except msgspec.ValidationError as exc:
        raise _reject("invalid_command", f"命令参数无效：{exc}", f"invalid command: {exc}", raw) \
            from exc


class SeenCommands:
    """Remembers recent command ids: QoS 1 may deliver a command twice; act once."""

    def __init__(self, size: int = 1024) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, cmd_id: str) -> bool:
        if cmd_id in self._ids:
            return False
        self._ids[cmd_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True
