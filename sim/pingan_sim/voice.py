"""A simulated officer's microphone for live voice (喊话): a known tone sequence, encoded
to Opus the way the console's page does (libopus, 48 kHz mono, 20 ms frames, 24 kbit/s),
and the `VoicePacket`s the centre would relay. Used by the tests (the same tones are the
fake microphone Chromium reads) and bench/live_voice.py."""

from __future__ import annotations

import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from edge.contract import voice as contract

RATE = contract.OPUS_RATE
FRAME = RATE // 50  # 20 ms
TONES = (500.0, 800.0, 1200.0)


def tone_sequence(freqs: tuple[float, ...] = TONES, tone_s: float = 0.3, gap_s: float = 0.2,
                  rate: int = RATE, lead_s: float = 0.0) -> np.ndarray:
    """Each tone `tone_s` long then `gap_s` of silence, after `lead_s` of silence
    (int16 mono; 10 ms ramps so a tone starts and stops without a click)."""
    parts = [np.zeros(int(lead_s * rate), np.float32)]
    n = int(tone_s * rate)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * rate))
    for f in freqs:
        t = np.arange(n) / rate
        parts.append((np.sin(2 * np.pi * f * t) * ramp).astype(np.float32))
        parts.append(np.zeros(int(gap_s * rate), np.float32))
    return (np.concatenate(parts) * 12000).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


class Encoder:
    """libopus through PyAV, as the browser's AudioEncoder is configured."""

    def __init__(self, bitrate: int = 24000) -> None:
        import av

        self._av = av
        self._codec: Any = av.CodecContext.create("libopus", "w")
        self._codec.sample_rate = RATE
        self._codec.layout = "mono"
        self._codec.format = "s16"
        self._codec.bit_rate = bitrate
        self._codec.options = {"frame_duration": "20", "application": "voip"}
        self._codec.open()
        self._pts = 0

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Opus packets for whole 20 ms frames of `samples` (int16, 48 kHz)."""
        out: list[bytes] = []
        for start in range(0, len(samples) - FRAME + 1, FRAME):
            frame = self._av.AudioFrame.from_ndarray(
                samples[start:start + FRAME].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = self._pts
            self._pts += FRAME
            out.extend(bytes(p) for p in self._codec.encode(frame))
        return out


def packet(session: str, seq: int, frames: list[bytes], at_ms: float | None = None,
           end: bool = False, by: str = "sim") -> bytes:
    return contract.encode(contract.VoicePacket(
        session=session, seq=seq, at_ms=int(time.time() * 1000 if at_ms is None else at_ms),
        frames=frames, end=end, by=by))


def packets(session: str, samples: np.ndarray, per_packet: int = 3) -> list[bytes]:
    """All of `samples` as packets, the last one marked `end` (for tests that do not
    care about timing: at_ms is now)."""
    frames = Encoder().encode(samples)
    groups = [frames[i:i + per_packet] for i in range(0, len(frames), per_packet)]
    return [packet(session, i, g, end=i == len(groups) - 1) for i, g in enumerate(groups)]
