"""Helpers for the loudspeaker tests: an ALSA sink that records what PortAudio played,
and a spectral reading of it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ALSA_CONF = """
pcm.!default {{
    type plug
    slave {{
        pcm {{ type file  slave.pcm {{ type null }}  file "|cat >> {played}"  format "raw"
              infile "{mic}" }}
        format S16_LE  rate {rate}  channels 1
    }}
}}
"""


class Sink:
    """ALSA's default device, recording (appending) raw S16_LE mono to a file."""

    def __init__(self, directory: Path, rate: int, mic_hz: float = 700.0) -> None:
        self.rate = rate
        self.played = directory / "played.raw"
        self.played.write_bytes(b"")
        mic = directory / "mic.raw"
        t = np.arange(rate * 2) / rate
        (np.sin(2 * np.pi * mic_hz * t) * 12000).astype("<i2").tofile(mic)
        self.conf = directory / "asound.conf"
        self.conf.write_text(ALSA_CONF.format(played=self.played, mic=mic, rate=rate))
        self.mark = 0

    def samples(self) -> np.ndarray:
        return np.fromfile(self.played, dtype="<i2").astype(np.float32) / 32768

    def since_mark(self) -> np.ndarray:
        return self.samples()[self.mark:]

    def settle(self, quiet_s: float = 0.3, timeout: float = 10.0) -> None:
        """Wait until the recording stops growing for `quiet_s`: what a closed stream
        wrote passes through a pipe to `cat` (ALSA_CONF), which a loaded machine delays."""
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = self.played.stat().st_size
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.02)
        raise AssertionError(f"the sink kept growing for {timeout} s")

    def set_mark(self) -> None:
        self.mark = len(self.samples())


def dominant(x: np.ndarray, rate: int, window_s: float = 0.02) -> list[float]:
    """The strongest frequency of each window; 0 for silence."""
    n = int(rate * window_s)
    out = []
    for start in range(0, len(x) - n + 1, n):
        w = x[start:start + n]
        if np.sqrt(np.mean(w ** 2)) < 0.02:
            out.append(0.0)
            continue
        spectrum = np.abs(np.fft.rfft(w * np.hanning(n), 8 * n))
        out.append(float(np.argmax(spectrum) * rate / (8 * n)))
    return out


def runs(x: np.ndarray, rate: int, freqs: list[float], window_s: float = 0.02,
         tolerance: float = 40.0) -> list[tuple[float, float]]:
    """What was heard, as (frequency, seconds) runs, each window snapped to the nearest of
    `freqs`; silence and runs under two windows (transitions) are left out."""
    labels = []
    for f in dominant(x, rate, window_s):
        near = min(freqs, key=lambda g: abs(g - f)) if f else 0.0
        labels.append(near if f and abs(near - f) <= tolerance else 0.0)
    out: list[tuple[float, int]] = []
    for label in labels:
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1] + 1)
        else:
            out.append((label, 1))
    merged: list[tuple[float, float]] = []
    for label, count in out:
        if label == 0.0 or count < 2:
            continue
        if merged and merged[-1][0] == label:
            merged[-1] = (label, merged[-1][1] + count * window_s)
        else:
            merged.append((label, count * window_s))
    return merged
