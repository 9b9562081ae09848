"""The loudspeaker stage's face to the station: the siren and prompts for the alarm path,
push-to-talk for the broadcast button, and the township's audio commands.

Nothing here blocks the alarm path: the siren and prompts are pre-rendered and only
queued to the player thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.audio import tones, tts
from edge.audio.amplifier import Amplifier
from edge.audio.clips import ClipError, ClipLibrary
from edge.audio.output import AudioUnavailable, Output, check, use_null_device
from edge.audio.player import Level, Play, Player
from edge.audio.ptt import PushToTalk
from edge.audio.schedule import Cron, CronError, Scheduler, in_quiet_hours
from edge.audio.sound import Sound, release
from edge.audio.store import AudioStore
from edge.audio.tts import PROMPTS, Speech, TtsError
from edge.audio.voice import LiveVoice
from edge.config import TTS_RENDER_MAX_BYTES, AudioSection
from edge.contract import commands
from edge.contract.commands import rejected
from edge.contract.events import (
    SCHEDULES_MAX,
    AudioPayload,
    ScheduleDigest,
    Text,
    VoicePayload,
    text,
)
from edge.health import Health
from edge.link.dispatch import Handlers
from edge.logs import log

logger = logging.getLogger("edge.audio")

ORIGIN_LEVELS = {Level.SIREN: "siren", Level.EMERGENCY: "emergency", Level.PTT: "ptt",
                 Level.NORMAL: "normal", Level.SCHEDULED: "scheduled", Level.PROMPT: "prompt"}


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Loudspeaker:
    def __init__(self, audio: AudioSection, data_dir: Path, *, pin_factory: Any, amp_pin: int,
                 health: Health, emit: Callable[[AudioPayload], None],
                 emit_voice: Callable[[VoicePayload], None] = lambda _payload: None,
                 now: Callable[[], dt.datetime] = _utc_now) -> None:
        self.config = audio
        self._health = health
        self._emit = emit
        self._now = now
        rate = audio.sample_rate
        self.played_file = use_null_device(data_dir, rate) if audio.output == "null" else None
        self.output = Output(audio)
        self.amplifier = Amplifier(amp_pin, pin_factory, audio.amp_warm_up_s)
        self.player = Player(self.output, self.amplifier, lead_ms=audio.lead_ms,
                             idle_off_s=audio.amp_idle_off_s, on_unavailable=self._unavailable)
        self.player.add_listener(self._report)
        self.clips = ClipLibrary(data_dir / "clips", audio.clip_max_bytes,
                                 total_bytes=audio.clips_total_bytes, max_clips=audio.clips_max)
        self.store = AudioStore(data_dir / "audio.db")
        self.speech = Speech(tts.engine(audio), data_dir / "tts-cache", rate,
                             max_bytes=audio.tts_cache_bytes,
                             max_entries=audio.tts_cache_entries,
                             max_render_bytes=TTS_RENDER_MAX_BYTES)
        self.tz = zoneinfo.ZoneInfo(audio.timezone)
        self.scheduler = Scheduler(self.store, self.tz, self._scheduled, now)
        self.ptt = PushToTalk(audio.mic_device, rate, self.output.block, tones.chime(rate))
        # Live speech from the township (its own thread decodes; it reports audio.voice).
        self.voice = LiveVoice(self.player, rate, self.output.block,
                               jitter_ms=audio.voice_jitter_ms, max_ms=audio.voice_max_ms,
                               volume=lambda: self.volume, emit=emit_voice)
        self.volume = self.store.volume(audio.volume)
        self._siren = tones.siren(rate)
        self._device_ok = True
        self._closed = False
        self._prompts = threading.Thread(target=self._render_prompts, name="audio-prompts",
                                         daemon=True)

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        try:
            name = check(self.config.device)
            log(logger, "info", "audio.device", device=name, rate=self.config.sample_rate)
            self._unavailable(None)
        except AudioUnavailable as exc:
            self._unavailable(str(exc))
        self._report_schedules()
        self.player.start()
        self.voice.start()
        self.scheduler.start()
        if self.config.prompts:
            self._prompts.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ptt.release()
        self.voice.close()
        self.scheduler.close()
        self.player.close()
        self.amplifier.close()
        self.store.close()

    def _render_prompts(self) -> None:
        """Render the staff prompts once (cached on disk) so a press never waits for TTS."""
        try:
            self.speech.prompts([zh for zh, _en in PROMPTS.values()])
            self._health.clear("tts_unavailable")
        except (TtsError, OSError, RuntimeError) as exc:  # no espeak-ng, disk full, ...
            self._health.set("tts_unavailable", f"语音合成不可用，提示音将不播放：{exc}",
                             f"text to speech unavailable, no spoken prompts: {exc}",
                             action="apt-get install espeak-ng")

    def _unavailable(self, problem: str | None) -> None:
        self._device_ok = problem is None
        if problem is None:
            self._health.clear("audio_unavailable")
        else:
            self._health.set("audio_unavailable", f"喇叭音频设备不可用：{problem}",
                             f"loudspeaker audio device unavailable: {problem}",
                             action="check the USB sound card / audio.device; "
                                    "alarms are still sent to the township")

    # --- the alarm path and the buttons ----------------------------------------------

    def siren(self) -> None:
        if not self.config.siren:
            return  # silent alarm: the township is paged, the village hears nothing
        self.player.submit(Play("siren", Level.SIREN, "siren", "tone:siren",
                                samples=self._siren, repeat=math.ceil(self.config.siren_s),
                                volume=self.config.siren_volume))

    def silence_siren(self) -> list[str]:
        return self.player.cancel(lambda p: p.origin == "siren")

    def prompt(self, name: str) -> None:
        """A staff prompt about the alarm. A silent alarm (siren = false) says nothing
        either: whoever caused the alarm must not hear that it was raised."""
        if not (self.config.prompts and self.config.siren):
            return
        sound = f"prompt:{name}"
        if any(p.sound == sound for p in self.player.pending()):
            return  # already waiting to be said (e.g. behind the siren): once is enough
        samples = self.speech.ready(PROMPTS[name][0])
        if samples is None:
            log(logger, "warning", "audio.prompt_not_ready", prompt=name,
                action="see tts_unavailable on the state topic")
            return
        self.player.submit(Play(f"prompt-{uuid.uuid4().hex[:12]}", Level.PROMPT, "prompt",
                                sound, samples=samples, volume=self.volume))

    def ptt_press(self) -> None:
        live = self.ptt.press()
        if live is not None:
            self.player.submit(Play(f"ptt-{uuid.uuid4().hex[:12]}", Level.PTT, "ptt", "live",
                                    live=live, volume=1.0))

    def ptt_release(self) -> None:
        self.ptt.release()

    # --- events ----------------------------------------------------------------------

    def _report(self, phase: str, play: Play, detail: dict[str, object]) -> None:
        if play.origin == "voice":
            return  # live speech reports audio.voice itself (edge/audio/voice.py)
        by = detail.get("by")
        reason = detail.get("reason")
        if phase == "preempted":
            policy = detail.get("policy")
            reason = text({"resume": "稍后继续播放", "restart": "稍后重新播放",
                           "drop": "不再播放"}[str(policy)],
                          f"cut off by {by}; it will {policy}" if policy != "drop"
                          else f"cut off by {by}; dropped")
        payload = AudioPayload(
            phase=phase, play_id=play.play_id, origin=play.origin,  # type: ignore[arg-type]
            level=ORIGIN_LEVELS[play.level], sound=play.sound,  # type: ignore[arg-type]
            cmd_id=play.cmd_id, schedule_id=play.schedule_id,
            by=str(by) if by is not None else None,
            reason=reason if isinstance(reason, Text) else None,
            played_s=round(play.position / self.output.rate, 3))
        log(logger, "warning" if phase == "failed" else "info", f"audio.{phase}",
            play_id=play.play_id, origin=play.origin, sound=play.sound, by=by)
        self._emit(payload)

    # --- township commands -----------------------------------------------------------

    def register(self, handlers: Handlers) -> None:
        handlers.register(commands.BroadcastPlay, self._play)
        handlers.register(commands.BroadcastStop, self._stop)
        handlers.register(commands.ClipPut, self._clip_put)
        handlers.register(commands.ClipDelete, self._clip_delete)
        handlers.register(commands.ScheduleSet, self._schedule_set)
        handlers.register(commands.ScheduleClear, self._schedule_clear)
        handlers.register(commands.VolumeSet, self._volume_set)

    def _stop(self, cmd: commands.BroadcastStop) -> dict[str, Any]:
        stopped = self.player.cancel(lambda p: p.origin in ("township", "schedule") and (
            cmd.broadcast_id is None or p.play_id == cmd.broadcast_id))
        return {"stopped": stopped}

    def _clip_put(self, cmd: commands.ClipPut) -> dict[str, Any]:
        try:
            return self.clips.put_chunk(cmd)
        except ClipError as exc:
            raise rejected(cmd, exc.code, exc.message) from exc

    def _clip_delete(self, cmd: commands.ClipDelete) -> dict[str, Any]:
        if not self.clips.delete(cmd.clip_id):
            raise rejected(cmd, "unknown_clip", text(f"本站没有片段 {cmd.clip_id}",
                                                    f"no clip {cmd.clip_id} at this station"))
        return {"clip_id": cmd.clip_id}

    def _schedule_set(self, cmd: commands.ScheduleSet) -> dict[str, Any]:
        try:
            Cron(cmd.cron)
        except CronError as exc:
            raise rejected(cmd, "invalid_command", text(f"cron 表达式无效：{exc}", str(exc))) \
                from exc
        stored = [s.schedule_id for s, _ in self.store.schedules()]
        if cmd.schedule_id not in stored and len(stored) >= SCHEDULES_MAX:
            raise rejected(cmd, "too_many_schedules", text(
                f"本站已有 {len(stored)} 个定时广播（上限 {SCHEDULES_MAX}），请先删除不用的",
                f"{len(stored)} schedules stored (limit {SCHEDULES_MAX}): clear unused ones "
                f"first"))
        release(self._sound(cmd, cached=True)[1])  # the clip exists / the text renders
        self.store.put_schedule(cmd)
        self._report_schedules()
        return {"schedule_id": cmd.schedule_id, "cron": cmd.cron,
                "timezone": self.config.timezone}

    def _schedule_clear(self, cmd: commands.ScheduleClear) -> dict[str, Any]:
        count = self.store.clear_schedules(cmd.schedule_id)
        self._report_schedules()
        if cmd.schedule_id is not None and count == 0:
            raise rejected(cmd, "unknown_schedule", text(
                f"本站没有定时广播 {cmd.schedule_id}",
                f"no schedule {cmd.schedule_id} at this station"))
        return {"cleared": count}

    def _report_schedules(self) -> None:
        """The stored schedules on the state topic (republished when they change)."""
        self._health.set_schedules([
            ScheduleDigest(schedule_id=s.schedule_id, cron=s.cron, digest=s.digest())
            for s, _last in self.store.schedules()])

    def _volume_set(self, cmd: commands.VolumeSet) -> dict[str, Any]:
        self.store.set_volume(cmd.volume)
        self.volume = cmd.volume
        return {"volume": cmd.volume}

    def _sound(self, cmd: commands.BroadcastPlay | commands.ScheduleSet, *, cached: bool
               ) -> tuple[str, Sound]:
        """What `cmd` sounds, streamed from a file for a clip or a text (close it, or
        hand it to the player, which does)."""
        try:
            if cmd.clip is not None:
                return f"clip:{cmd.clip}", self.clips.load(cmd.clip, self.output.rate)
            if cmd.text is not None:
                return "text", self.speech.sound(cmd.text, cached=cached)
            assert cmd.tone is not None
            return f"tone:{cmd.tone}", tones.named(cmd.tone, self.output.rate)
        except ClipError as exc:
            raise rejected(cmd, exc.code, exc.message) from exc
        except TtsError as exc:
            raise rejected(cmd, "tts_failed", text(f"语音合成失败：{exc}", str(exc))) from exc

    def _play(self, cmd: commands.BroadcastPlay) -> dict[str, Any]:
        now = self._now()
        if cmd.expires is not None and cmd.expires <= now:
            raise rejected(cmd, "expired", text(
                f"广播已于 {cmd.expires.isoformat()} 过期，未播放",
                f"broadcast expired at {cmd.expires.isoformat()}; not played"))
        emergency = cmd.priority == "emergency"
        if not emergency and in_quiet_hours(now.astimezone(self.tz), self.config.quiet_start,
                                            self.config.quiet_end):
            raise rejected(cmd, "quiet_hours", text(
                f"静默时段（{self.config.quiet_start}–{self.config.quiet_end}）只播放紧急广播",
                f"quiet hours ({self.config.quiet_start}-{self.config.quiet_end}): "
                f"only emergency broadcasts play"))
        waiting = sum(1 for p in self.player.pending() if p.origin in ("township", "schedule"))
        if waiting >= self.config.queue_max:
            raise rejected(cmd, "busy", text(
                f"已有 {waiting} 条广播等待播放，本条未接受，请稍后重发",
                f"{waiting} broadcasts are already waiting to play (audio.queue_max): "
                f"not accepted; send it again later"))
        if not self._device_ok:
            try:
                check(self.config.device)
            except AudioUnavailable as exc:
                raise rejected(cmd, "audio_unavailable", text(
                    f"喇叭音频设备不可用：{exc}", str(exc))) from exc
        sound, samples = self._sound(cmd, cached=False)
        mono = time.monotonic()
        not_before = mono + max(0.0, (cmd.not_before - now).total_seconds()) \
            if cmd.not_before else 0.0
        expires = mono + (cmd.expires - now).total_seconds() if cmd.expires else None
        play = Play(cmd.id, Level.EMERGENCY if emergency else Level.NORMAL, "township", sound,
                    samples=samples, repeat=cmd.repeat,
                    volume=self.volume if cmd.volume is None else cmd.volume,
                    not_before=not_before, expires=expires, cmd_id=cmd.id)
        self.player.submit(play)
        current = self.player.current
        return {"play_id": cmd.id, "plays_as": ORIGIN_LEVELS[play.level], "sound": sound,
                "duration_s": round(len(samples) * cmd.repeat / self.output.rate, 3),
                "playing_now": current.play_id if current else None}

    def _scheduled(self, spec: commands.ScheduleSet, minute: dt.datetime) -> None:
        play = Play(f"{spec.schedule_id}@{minute:%Y%m%dT%H%M}", Level.SCHEDULED, "schedule",
                    "?", repeat=spec.repeat, schedule_id=spec.schedule_id,
                    volume=self.volume if spec.volume is None else spec.volume)
        if in_quiet_hours(minute, self.config.quiet_start, self.config.quiet_end):
            self._report("skipped", play, {"reason": text("静默时段，定时广播未播放",
                                                          "quiet hours: not played")})
            return
        waiting = sum(1 for p in self.player.pending() if p.origin in ("township", "schedule"))
        if waiting >= self.config.queue_max:
            self._report("skipped", play, {"reason": text(
                "等待播放的广播过多，定时广播未播放",
                "too many broadcasts waiting (audio.queue_max): not played")})
            return
        try:
            play.sound, play.samples = self._sound(spec, cached=True)
        except commands.CommandRejected as exc:
            self._report("failed", play, {"reason": exc.error.message})
            return
        self.player.submit(play)

    def status(self) -> dict[str, Any]:
        current = self.player.current
        return {"playing": current.play_id if current else None,
                "queued": [p.play_id for p in self.player.pending()],
                "amplifier": self.amplifier.is_on, "volume": self.volume,
                "voice": self.voice.status(),
                "device_ok": self._device_ok, "clips": self.clips.ids(),
                "schedules": [s.schedule_id for s, _ in self.store.schedules()]}
