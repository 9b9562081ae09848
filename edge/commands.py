"""Township commands: their shapes, and validation at the edge of the program.

Every payload that arrives on `…/cmd` or `pingan/v1/<township>/all/cmd` goes through
`parse()`: it returns a typed command or a `CommandRejected` with an error that is
answered on `…/cmd/result`. Nothing past this point sees unvalidated input.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated, Any

import msgspec

from edge.events import ErrorInfo, EventId, text

CmdId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class CommandBase(msgspec.Struct, tag_field="cmd", forbid_unknown_fields=True, kw_only=True):
    id: CmdId
    # Who sent it (officer or service account), for the local log only.
    by: Annotated[str, msgspec.Meta(max_length=64)] = ""


class AlarmAck(CommandBase, tag="alarm.ack", kw_only=True):
    """The township has seen the alarm `event_id`: the station shows and says so."""

    event_id: EventId


class StateGet(CommandBase, tag="state.get", kw_only=True):
    """Republish the retained state now."""


class CameraArm(CommandBase, tag="camera.arm", kw_only=True):
    """Arm the camera now; `for_s` = 0 holds until the next change of camera.schedule."""

    for_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 0


class CameraDisarm(CommandBase, tag="camera.disarm", kw_only=True):
    """Disarm the camera now; `for_s` = 0 holds until the next change of camera.schedule."""

    for_s: Annotated[float, msgspec.Meta(ge=0, le=7 * 86400)] = 0


Command = AlarmAck | StateGet | CameraArm | CameraDisarm
KNOWN = {str(cls.__struct_config__.tag) for cls in (AlarmAck, StateGet, CameraArm, CameraDisarm)}

_decoder = msgspec.json.Decoder()


class CommandRejected(Exception):
    def __init__(self, error: ErrorInfo, cmd_id: str | None, cmd: str | None) -> None:
        super().__init__(error.message.en)
        self.error = error
        self.cmd_id = cmd_id
        self.cmd = cmd


def _reject(code: Any, zh: str, en: str, raw: Any = None) -> CommandRejected:
    cmd_id = raw.get("id") if isinstance(raw, dict) else None
    cmd = raw.get("cmd") if isinstance(raw, dict) else None
    return CommandRejected(
        ErrorInfo(code=code, message=text(zh, en)),
        cmd_id if isinstance(cmd_id, str) and len(cmd_id) <= 64 else None,
        cmd if isinstance(cmd, str) and len(cmd) <= 64 else None,
    )


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
