"""Live speech from the township (喊话): Opus packets in, the loudspeaker out.

paho's network thread only queues a packet's bytes (`receive`, bounded; a full queue
drops the packet). The `voice-decode` thread validates it (edge/contract/voice.py),
decodes its Opus frames with libopus (PyAV's wheel carries it) and resamples them to the
loudspeaker's rate, into the session's jitter buffer. The session plays through the
player as a live source at the PTT level: the siren and emergencies cut it off (live
speech is then dropped, not resumed), it cuts off normal and scheduled broadcasts.

The jitter buffer is small and bounded: playing starts once `voice_jitter_ms` is
buffered; when it runs dry (an underrun) it plays silence until it holds that much
again; when it holds more than `voice_max_ms` (the station fell behind, or waited behind
the siren) the oldest audio is dropped down to `voice_jitter_ms`: a station never speaks
ever later. Each session reports `audio.voice` events: started, underrun, finished or
preempted, with its counters and its mouth → loudspeaker delay.

Nothing here runs on the threads that store or send alarms.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import numpy as np

from edge.audio.player import Level, Play, Player
from edge.audio.tones import Samples
from edge.contract import voice as contract
from edge.contract.events import Text, VoicePayload, text
from edge.logs import log

logger = logging.getLogger("edge.audio.voice")

QUEUE_PACKETS = 64  # ~4 s of 60 ms packets between the network thread and the decoder
MAX_PACKET_BYTES = 64 * 1024
IDLE_END_S = 1.5  # nothing for this long: the officer is gone (the end packet was lost)
REMEMBER_SESSIONS = 32  # ended sessions whose late packets are ignored
UNDERRUN_REPORT_S = 1.0
DELAYS_KEPT = 4096
INVALID_LOG_S = 10.0  # a console of another version sends 16 a second: one line is enough


class Session:
    """One officer's live speech at this station: its decoder, its jitter buffer, its
    counters. Packets go in on the decoder thread; blocks come out on the player's."""

    def __init__(self, session: str, by: str, rate: int, block: int, *, jitter_ms: int,
                 max_ms: int, emit: Callable[[str, Session], None]) -> None:
        import av

        self.id = session
        self.by = by
        self.rate = rate
        self._block = block
        self._jitter = rate * jitter_ms // 1000
        self._max = rate * max_ms // 1000
        self._emit = emit
        self._codec: Any = av.CodecContext.create("libopus", "r")
        self._codec.sample_rate = contract.OPUS_RATE
        self._codec.layout = "mono"
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self._cond = threading.Condition()
        # (samples, capture time of its first sample: Unix seconds, the officer's clock;
        # when it arrived here: monotonic)
        self._chunks: deque[tuple[Samples, float, float]] = deque()
        self._buffered = 0
        self.last_seq = -1
        self.last_packet = time.monotonic()
        self.ended = False  # no more packets will be taken
        self.over = False  # the player is done with it
        self.started = False
        self.packets = self.lost = self.dropped = self.underruns = self.played = 0
        self.delays: deque[float] = deque(maxlen=DELAYS_KEPT)
        self._last_underrun_report = 0.0

    # --- the decoder thread ----------------------------------------------------------

    def push(self, packet: contract.VoicePacket) -> None:
        import av

        if self.ended or packet.seq <= self.last_seq:
            return  # after the end, or a duplicate: nothing to play
        if self.last_seq >= 0 and packet.seq > self.last_seq + 1:
            self.lost += packet.seq - self.last_seq - 1
        self.last_seq = packet.seq
        self.packets += 1
        self.last_packet = time.monotonic()
        at = packet.at_ms / 1000.0
        decoded: list[tuple[Samples, float]] = []
        for frame_bytes in packet.frames:
            try:
                frames = self._codec.decode(av.Packet(frame_bytes))
            except av.error.FFmpegError as exc:  # a damaged frame: skip it, keep going
                log(logger, "debug", "voice.bad_frame", session=self.id, error=str(exc))
                continue
            for frame in frames:
                for out in self._resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    decoded.append((samples, at))
                at += frame.samples / contract.OPUS_RATE
        arrived = time.monotonic()
        with self._cond:
            for samples, captured in decoded:
                if len(samples):
                    self._chunks.append((samples, captured, arrived))
                    self._buffered += len(samples)
            if self._buffered > self._max:
                self._drop(self._buffered - self._jitter)
            if packet.end:
                self.ended = True
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def _drop(self, count: int) -> None:
        """Throw away the oldest `count` samples (under self._cond)."""
        self.dropped += count
        while count > 0 and self._chunks:
            samples, captured, arrived = self._chunks[0]
            if len(samples) <= count:
                self._chunks.popleft()
                self._buffered -= len(samples)
                count -= len(samples)
            else:
                self._chunks[0] = (samples[count:], captured + count / self.rate, arrived)
                self._buffered -= count
                count = 0

    # --- the player thread -----------------------------------------------------------

    def _take(self, count: int) -> tuple[Samples, float | None]:
        """Up to `count` samples off the buffer and the capture time of the first one.
        Audio that waited in the buffer longer than voice_max_ms (it arrived while a
        siren played) is dropped first: it would only be late."""
        stale = time.monotonic() - self._max / self.rate
        while self._chunks and self._chunks[0][2] < stale:
            samples, _captured, _arrived = self._chunks.popleft()
            self._buffered -= len(samples)
            self.dropped += len(samples)
        parts: list[Samples] = []
        first: float | None = None
        while count > 0 and self._chunks:
            samples, captured, arrived = self._chunks[0]
            if first is None:
                first = captured
            if len(samples) <= count:
                self._chunks.popleft()
            else:
                self._chunks[0] = (samples[count:], captured + count / self.rate, arrived)
                samples = samples[:count]
            parts.append(samples)
            self._buffered -= len(samples)
            count -= len(samples)
        return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), first

    def blocks(self) -> Iterator[Samples]:
        """The live source: silence while the buffer fills (so the player stays able to
        cut in), the speech once `voice_jitter_ms` is there, silence again on an
        underrun, until the session ended and its audio played."""
        silence = np.zeros(self._block, np.float32)
        filling = True
        block_s = self._block / self.rate
        while True:
            underrun = False
            with self._cond:
                if filling and self._buffered < self._jitter and not self.ended:
                    self._cond.wait(block_s)
                if self._buffered >= self._jitter or (self.ended and self._buffered):
                    filling = False
                if self.ended and not self._buffered:
                    return
                chunk: Samples | None = None
                captured: float | None = None
                if not filling:
                    if self._buffered < self._block and not self.ended:
                        self._cond.wait(block_s)  # a packet may be just arriving
                    if self._buffered >= self._block or (self.ended and self._buffered):
                        chunk, captured = self._take(self._block)
                        if not len(chunk):  # all of it waited too long: fill again
                            chunk, filling = None, True
                    elif not self.ended:
                        filling = underrun = True
                        self.underruns += 1
            if underrun:
                self._underrun_report()
            if chunk is None:
                if time.monotonic() - self.last_packet > IDLE_END_S:
                    self.end()
                yield silence
                continue
            if captured is not None:
                self.delays.append(time.time() - captured)
            self.played += len(chunk)
            if not self.started:
                self.started = True
                self._emit("started", self)
            yield chunk

    def _underrun_report(self) -> None:
        now = time.monotonic()
        if self.started and now - self._last_underrun_report >= UNDERRUN_REPORT_S:
            self._last_underrun_report = now
            self._emit("underrun", self)

    def payload(self, phase: str, reason: Text | None = None) -> VoicePayload:
        delays = sorted(self.delays)
        # The clocks of the officer's PC and this station disagree when it is negative.
        usable = delays and delays[0] >= -0.05

        def pct(q: float) -> int | None:
            return round(1000 * delays[min(len(delays) - 1, int(q * len(delays)))]) \
                if usable else None

        return VoicePayload(
            phase=phase, session=self.id, by=self.by, packets=self.packets,  # type: ignore[arg-type]
            lost=self.lost, dropped_ms=self.dropped * 1000 // self.rate,
            underruns=self.underruns, played_s=round(self.played / self.rate, 3),
            delay_ms_p50=pct(0.5), delay_ms_p95=pct(0.95), reason=reason)


class LiveVoice:
    """The station's receiver of live speech; one session plays at a time (a newer one
    ends the one before)."""

    def __init__(self, player: Player, rate: int, block: int, *, jitter_ms: int,
                 max_ms: int, volume: Callable[[], float],
                 emit: Callable[[VoicePayload], None]) -> None:
        self._player = player
        self._rate = rate
        self._block = block
        self._jitter_ms = jitter_ms
        self._max_ms = min(max(max_ms, jitter_ms + 60), 3000)
        self._volume = volume
        self._emit = emit
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_PACKETS)
        self._current: Session | None = None
        self._playing: dict[str, Session] = {}  # play id → its session, until the player is done
        self._done: deque[str] = deque(maxlen=REMEMBER_SESSIONS)
        self._lock = threading.Lock()
        self.refused = 0  # packets dropped before decoding (queue full, too large, invalid)
        self._invalid_logged = -INVALID_LOG_S
        self._thread = threading.Thread(target=self._run, name="voice-decode", daemon=True)
        player.add_listener(self._on_phase)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(0.1)  # it wakes at once; a daemon, whatever it decodes
        with self._lock:
            current = self._current
        if current is not None:
            current.end()

    def receive(self, _topic: str, payload: bytes) -> None:
        """On paho's network thread: queue and return; never decodes, never waits."""
        if len(payload) > MAX_PACKET_BYTES:
            self.refused += 1
            return
        try:
            self._queue.put_nowait(payload)
        except queue.Full:  # the decoder is behind: this audio would come too late anyway
            self.refused += 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            current = self._current
        return {"session": current.id if current and not current.over else None,
                "refused": self.refused}

    # --- the decoder thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                data = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._idle()
                continue
            if data is None:
                return
            try:
                packet = contract.decode(data)
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                self.refused += 1
                if time.monotonic() - self._invalid_logged >= INVALID_LOG_S:
                    self._invalid_logged = time.monotonic()
                    log(logger, "warning", "voice.invalid_packet", error=str(exc)[:200],
                        refused=self.refused,
                        action="a township console of another version? live speech ignored")
                continue
            try:
                self._take(packet)
            except Exception:  # a decoder failure must not end the thread
                logger.exception("voice.decode_failed")

    def _idle(self) -> None:
        with self._lock:
            current = self._current
        if current is not None and not current.ended \
                and time.monotonic() - current.last_packet > IDLE_END_S:
            current.end()

    def _take(self, packet: contract.VoicePacket) -> None:
        with self._lock:
            current = self._current
            if packet.session in self._done:
                return  # late packets of a session that ended here
            if current is None or current.id != packet.session:
                if current is not None:
                    current.end()  # a newer session replaces it
                    self._done.append(current.id)
                if packet.end and not packet.frames:
                    return
                current = self._current = Session(
                    packet.session, packet.by, self._rate, self._block,
                    jitter_ms=self._jitter_ms, max_ms=self._max_ms, emit=self._report)
                play_id = f"voice-{packet.session}"[:64]
                self._playing[play_id] = current
                self._player.submit(Play(play_id, Level.PTT, "voice", "live",
                                         live=current.blocks, volume=self._volume()))
        current.push(packet)

    # --- what the station reports ----------------------------------------------------

    def _report(self, phase: str, session: Session, reason: Text | None = None) -> None:
        payload = session.payload(phase, reason)
        log(logger, "warning" if phase in ("underrun", "failed") else "info",
            f"voice.{phase}", session=session.id, packets=payload.packets,
            lost=payload.lost, underruns=payload.underruns, dropped_ms=payload.dropped_ms,
            delay_ms_p50=payload.delay_ms_p50)
        self._emit(payload)

    def _on_phase(self, phase: str, play: Play, detail: dict[str, object]) -> None:
        """The player's word on a session's play (on the player thread)."""
        if play.origin != "voice" or phase in ("started", "resumed"):
            return
        with self._lock:
            session = self._playing.pop(play.play_id, None)
            if session is None:
                return
            session.over = True
            session.end()
            if session.id not in self._done:
                self._done.append(session.id)
            if self._current is session:
                self._current = None
        if phase == "preempted":
            self._report("preempted", session, text(f"被 {detail.get('by')} 打断，不再继续",
                                                    f"cut off by {detail.get('by')}"))
        elif phase == "failed":
            reason = detail.get("reason")
            self._report("failed", session, reason if isinstance(reason, Text) else None)
        elif session.started:
            self._report("finished", session)
        else:  # ended before any of it sounded (nothing arrived in time, or stopped)
            self._report("finished", session, text("没有收到可播放的语音",
                                                   "no speech arrived in time to play"))
