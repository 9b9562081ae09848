"""The player: the one owner of the loudspeaker, and the one priority policy.

Everything that wants to sound submits a `Play`. The highest level that is ready plays;
a higher level preempts a lower one within one block (`audio.block_ms`) plus what is
queued in the device (`audio.lead_ms`); equal levels queue in arrival order. What
happens to a play that was cut off is decided by its own level (`WHEN_PREEMPTED`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import numpy as np

from edge.audio.amplifier import Amplifier
from edge.audio.output import AudioUnavailable, Output
from edge.audio.sound import Sound, release
from edge.audio.tones import Samples
from edge.contract.events import text
from edge.logs import log

logger = logging.getLogger("edge.audio.player")


class Level(IntEnum):
    """Higher preempts lower."""

    PROMPT = 0
    SCHEDULED = 1
    NORMAL = 2
    PTT = 3
    EMERGENCY = 4
    SIREN = 5


class OnPreempt(StrEnum):
    RESUME = "resume"    # continue where it was cut off
    RESTART = "restart"  # play again from the start (a warning must be heard whole)
    DROP = "drop"        # gone (live speech cannot resume; a stale prompt helps nobody)


WHEN_PREEMPTED: dict[Level, OnPreempt] = {
    Level.SIREN: OnPreempt.RESUME,  # nothing outranks it; here for completeness
    Level.EMERGENCY: OnPreempt.RESTART,
    Level.PTT: OnPreempt.DROP,
    Level.NORMAL: OnPreempt.RESTART,
    Level.SCHEDULED: OnPreempt.RESUME,
    Level.PROMPT: OnPreempt.DROP,
}

_order = itertools.count()


@dataclass(eq=False)
class Play:
    """One thing to sound: finite `samples` (repeated `repeat` times) or a `live` source
    whose blocks are read while it plays (the microphone)."""

    play_id: str
    level: Level
    origin: str  # siren | township | ptt | voice | schedule | prompt
    sound: str
    samples: Sound | None = None
    live: Callable[[], Iterator[Samples]] | None = None
    repeat: int = 1
    volume: float = 1.0
    not_before: float = 0.0  # time.monotonic()
    expires: float | None = None  # time.monotonic()
    cmd_id: str | None = None
    schedule_id: str | None = None
    # Kept by the player.
    position: int = 0
    started: bool = False
    first_sample_at: float | None = None
    order: int = field(default_factory=lambda: next(_order))
    _live_iter: Iterator[Samples] | None = None

    def ready(self, now: float) -> bool:
        return self.not_before <= now

    def release(self) -> None:
        release(self.samples)


Listener = Callable[[str, Play, dict[str, object]], None]


class Player:
    def __init__(self, output: Output, amplifier: Amplifier | None, *, lead_ms: int,
                 idle_off_s: float, on_unavailable: Callable[[str | None], None]) -> None:
        self._output = output
        self._amp = amplifier
        self._lead_s = lead_ms / 1000.0
        self._idle_off_s = idle_off_s
        self._on_unavailable = on_unavailable
        self._listeners: list[Listener] = []
        self._cond = threading.Condition()
        self._queue: list[Play] = []
        self._current: Play | None = None
        self._cut: tuple[str, str | None] | None = None  # ("preempted", by) / ("stopped", None)
        self._closing = False
        self._audio_end = 0.0  # monotonic time at which the audio written so far ends
        self._thread = threading.Thread(target=self._run, name="audio-player", daemon=True)

    # --- API -------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._thread.start()

    def submit(self, play: Play) -> bool:
        """Queue `play`. A play with the same id already playing or queued is renewed
        (its repeat count runs again from now) instead: a second panic press does not
        queue a second siren. Returns False when it renewed."""
        with self._cond:
            for other in ([self._current] if self._current else []) + self._queue:
                if other.play_id == play.play_id and other.samples is not None:
                    done = other.position // max(1, len(other.samples))
                    other.repeat = done + play.repeat
                    play.release()
                    return False
            self._queue.append(play)
            self._cond.notify_all()
        return True

    def cancel(self, match: Callable[[Play], bool]) -> list[str]:
        """Stop every queued or playing play that `match`es; returns their ids."""
        with self._cond:
            gone = [p for p in self._queue if match(p)]
            self._queue = [p for p in self._queue if not match(p)]
            current = self._current
            if current is not None and match(current) and self._cut is None:
                self._cut = ("stopped", None)
                gone.append(current)
            self._cond.notify_all()
        for play in gone:
            if play is not current:
                play.release()
                self._emit("stopped", play)
        return [p.play_id for p in gone]

    @property
    def current(self) -> Play | None:
        with self._cond:
            return self._current

    def pending(self) -> list[Play]:
        with self._cond:
            return list(self._queue)

    @property
    def output_open(self) -> bool:
        """The output stream is open (it closes `idle_off_s` after the last sound)."""
        return self._output.is_open

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cut = ("stopped", None)
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(2)
        with self._cond:
            for play in self._queue:
                play.release()
        with contextlib.suppress(Exception):
            self._output.close()
        if self._amp:
            self._amp.power_down()

    # --- the player thread -----------------------------------------------------------

    def _emit(self, phase: str, play: Play, **detail: object) -> None:
        for listener in self._listeners:
            try:
                listener(phase, play, detail)
            except Exception:
                logger.exception("audio.listener_failed")

    def _best_ready(self, now: float) -> Play | None:
        ready = [p for p in self._queue if p.ready(now)]
        return max(ready, key=lambda p: (p.level, -p.order)) if ready else None

    def _next(self, idle_since: float | None) -> tuple[Play | None, list[Play]]:
        """The play to start now (removed from the queue) and the expired ones dropped."""
        with self._cond:
            now = time.monotonic()
            expired = [p for p in self._queue if p.expires is not None and p.expires <= now]
            self._queue = [p for p in self._queue if p not in expired]
            best = self._best_ready(now)
            if best is not None:
                self._queue.remove(best)
                self._current, self._cut = best, None
                return best, expired
            if not expired and not self._closing:
                waits = [p.not_before - now for p in self._queue]
                waits += [p.expires - now for p in self._queue if p.expires is not None]
                if idle_since is not None and self._output.is_open:
                    waits.append(idle_since + self._idle_off_s - now)
                self._cond.wait(max(0.0, min(waits)) if waits else None)
            return None, expired

    def _run(self) -> None:
        idle_since: float | None = None
        while not self._closing:
            play, expired = self._next(idle_since)
            for old in expired:
                old.release()
                self._emit("skipped", old, reason=text("已过期，未播放",
                                                       "expired before it could play"))
            if play is not None:
                self._play(play)
                idle_since = time.monotonic()
            elif (idle_since is not None and self._output.is_open
                  and time.monotonic() - idle_since >= self._idle_off_s):
                self._power_down()
                idle_since = None

    def _power_down(self) -> None:
        with contextlib.suppress(Exception):  # a vanished device may fail to close
            self._output.close()
        if self._amp:
            self._amp.power_down()
        log(logger, "debug", "audio.idle")

    def _blocks(self, play: Play) -> Iterator[Samples]:
        block = self._output.block
        if play.live is not None:
            if play._live_iter is None:
                play._live_iter = play.live()
            for chunk in play._live_iter:
                play.position += len(chunk)
                yield chunk
            return
        samples = play.samples
        assert samples is not None
        length = len(samples)
        while length and play.position < length * play.repeat:
            start = play.position % length
            chunk = samples[start:start + min(block, length - start)]
            play.position += len(chunk)
            yield chunk

    def _play(self, play: Play) -> None:
        outcome: tuple[str, str | None] | None = None
        try:
            if self._amp:
                self._amp.power_up()
            self._output.open()
            self._on_unavailable(None)
            resumed, announced = play.started, False
            gain = np.float32(play.volume)
            for chunk in self._blocks(play):
                with self._cond:
                    if self._cut is None:
                        better = self._best_ready(time.monotonic())
                        if better is not None and better.level > play.level:
                            self._cut = ("preempted", better.play_id)
                    outcome = self._cut
                if outcome is not None:
                    play.position = max(0, play.position - len(chunk))
                    break
                if play.first_sample_at is None:
                    play.first_sample_at = time.monotonic()
                self._output.write(chunk * gain)
                if not announced:
                    play.started = announced = True
                    self._emit("resumed" if resumed else "started", play)
                self._pace(len(chunk))
        except AudioUnavailable as exc:
            self._on_unavailable(str(exc))
            self._emit("failed", play, reason=text(f"音频设备不可用：{exc}", str(exc)))
            self._end(play, requeue=False)
            return
        except Exception as exc:  # a live source failed (microphone gone)
            logger.exception("audio.play_failed")
            self._emit("failed", play, reason=text(f"播放失败：{exc}", f"playback failed: {exc}"))
            self._end(play, requeue=False)
            return
        if outcome is None and not play.started:
            self._emit("skipped", play, reason=text("没有可播放的内容", "nothing to play"))
            self._end(play, requeue=False)
        elif outcome is None:
            self._emit("finished", play)
            self._end(play, requeue=False)
        elif outcome[0] == "stopped":
            self._emit("stopped", play)
            self._end(play, requeue=False)
        else:
            policy = WHEN_PREEMPTED[play.level]
            self._emit("preempted", play, by=outcome[1], policy=policy.value)
            if policy is OnPreempt.RESTART:
                play.position = 0
            self._end(play, requeue=policy is not OnPreempt.DROP)

    def _end(self, play: Play, *, requeue: bool) -> None:
        if not requeue:
            play.release()
        if not requeue and play._live_iter is not None:
            close = getattr(play._live_iter, "close", None)
            if close:
                close()
        with self._cond:
            self._current, self._cut = None, None
            if requeue and not self._closing:
                self._queue.append(play)

    def _pace(self, frames: int) -> None:
        """Stay at most `lead_ms` ahead of real time: a blocking write on a real card
        does this by itself; a null sink does not, and a preemption must cut in fast."""
        now = time.monotonic()
        self._audio_end = max(self._audio_end, now) + frames / self._output.rate
        ahead = self._audio_end - now - self._lead_s
        if ahead > 0:
            time.sleep(ahead)

