"""`attach`: the loudspeaker stage built for a station, its commands registered
(re-exported by `edge.audio`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from edge.audio.loudspeaker import Loudspeaker
from edge.config import Config
from edge.contract import commands
from edge.contract.events import AudioPayload, AudioPlayback, AudioVoice, VoicePayload, text
from edge.health import Health
from edge.link.dispatch import Handlers
from edge.store.recorder import Recorder

COMMANDS = (commands.BroadcastPlay, commands.BroadcastStop, commands.ClipPut,
            commands.ClipDelete, commands.ScheduleSet, commands.ScheduleClear,
            commands.VolumeSet)


def attach(config: Config, pin_factory: Any, health: Health, recorder: Recorder,
           handlers: Handlers, *, make: Callable[..., Loudspeaker] = Loudspeaker
           ) -> Loudspeaker | None:
    """The station's loudspeaker, its commands registered; None, and its commands refused,
    when audio is off or its state cannot be opened in the data directory."""
    loudspeaker = None
    if config.audio.enabled:
        def emit(payload: AudioPayload) -> None:
            recorder.record(AudioPlayback(payload=payload, **recorder.identity()))

        def emit_voice(payload: VoicePayload) -> None:
            recorder.record(AudioVoice(payload=payload, **recorder.identity()))

        try:
            loudspeaker = make(config.audio, config.data_dir, pin_factory=pin_factory,
                               amp_pin=config.pins.amp_relay, health=health, emit=emit,
                               emit_voice=emit_voice)
        except (OSError, sqlite3.Error) as exc:  # its state lives in the data directory
            health.set("audio_unavailable", f"喇叭无法启动（数据目录）：{exc}",
                       f"loudspeaker cannot start (data directory): {exc}",
                       action="see storage_unwritable; alarms are still sent")
    if loudspeaker is None:
        handlers.register(COMMANDS, _no_loudspeaker)
    else:
        loudspeaker.register(handlers)
    return loudspeaker


def _no_loudspeaker(cmd: commands.Command) -> dict[str, Any]:
    raise commands.rejected(cmd, "audio_unavailable", text(
        "本站未启用喇叭", "this station has no loudspeaker (audio.enabled = false)"))
