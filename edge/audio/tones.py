"""Generated tones: the panic siren and the attention chime (float32 mono, -1..1)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]

# A two-tone (hi-lo) siren: unmistakable, and each half is a clean peak for a test's FFT.
SIREN_HZ = (650.0, 1000.0)
SIREN_HALF_S = 0.5
CHIME_HZ = (880.0, 660.0)


def _sine(rate: int, hz: float, seconds: float) -> Samples:
    t = np.arange(round(rate * seconds), dtype=np.float64) / rate
    return np.sin(2 * np.pi * hz * t).astype(np.float32)


def _fade(x: Samples, rate: int, seconds: float = 0.005) -> Samples:
    """Short ramps at both ends, so joins do not click."""
    n = min(len(x) // 2, round(rate * seconds))
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def siren(rate: int) -> Samples:
    """One hi-lo cycle (1 s); the player repeats it for as long as the siren sounds."""
    lo, hi = SIREN_HZ
    return np.concatenate([_fade(_sine(rate, hi, SIREN_HALF_S), rate),
                           _fade(_sine(rate, lo, SIREN_HALF_S), rate)]) * np.float32(0.9)


def chime(rate: int) -> Samples:
    """Ding-dong with a decay (0.8 s): before and after a live announcement."""
    notes = []
    for hz in CHIME_HZ:
        note = _sine(rate, hz, 0.4)
        note *= np.exp(-np.arange(len(note), dtype=np.float32) / (rate * 0.15))
        notes.append(_fade(note, rate))
    return np.concatenate(notes) * np.float32(0.7)


def named(name: str, rate: int) -> Samples:
    return {"siren": siren, "chime": chime}[name](rate)
