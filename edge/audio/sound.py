"""A sound on disk, read one block at a time at the player's rate.

A clip or a long text can last many minutes: held whole as float32 samples, each would
cost tens of MB for as long as it waits in the player's queue. A `FileSound` holds an
open file and at most one block, and resamples as it reads (linear interpolation, as
`clips.resample`). The file is opened when the sound is made: it may be unlinked after
that (a scratch rendering, a clip replaced) and still plays to the end.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile

from edge.audio.tones import Samples


class Sound(Protocol):
    """What the player reads: finite, sliceable mono float32 at its rate."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice, /) -> Samples: ...


def release(sound: Sound | None) -> None:
    """Done with `sound`: one streamed from a file lets go of the file."""
    close = getattr(sound, "close", None)
    if close:
        close()


class FileSound:
    def __init__(self, path: Path, rate: int) -> None:
        self._file = soundfile.SoundFile(str(path))
        self.rate = rate
        self.source_rate = int(self._file.samplerate)
        self.source_frames = int(self._file.frames)
        self._step = self.source_rate / rate
        self._frames = round(self.source_frames * rate / self.source_rate)
        # The last source samples read, [_lo, _lo + len(_buf)): the next block starts
        # inside them, so a sequential read never seeks.
        self._lo = 0
        self._buf = np.zeros(0, dtype=np.float32)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._frames

    @property
    def seconds(self) -> float:
        return self._frames / self.rate

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def _source(self, lo: int, hi: int) -> Samples:
        """Source samples [lo, hi), mono."""
        end = self._lo + len(self._buf)
        if self._lo <= lo <= end:
            keep = self._buf[lo - self._lo:]
            start = end
        else:
            keep = np.zeros(0, dtype=np.float32)
            start = lo
        if hi > start:
            if self._file.tell() != start:
                self._file.seek(start)
            fresh = self._file.read(hi - start, dtype="float32", always_2d=True).mean(axis=1)
            keep = np.concatenate([keep, fresh.astype(np.float32)])
        self._lo, self._buf = lo, keep
        return keep[:hi - lo]

    def __getitem__(self, index: slice, /) -> Samples:
        start, stop, _ = index.indices(self._frames)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        with self._lock:
            if self.source_rate == self.rate:
                return self._source(start, stop).copy()
            positions = np.arange(start, stop, dtype=np.float64) * self._step
            lo = int(positions[0])
            hi = min(self.source_frames, int(positions[-1]) + 2)
            buf = self._source(lo, hi)
            if not len(buf):  # rounding put the last output sample past the source's end
                return np.zeros(stop - start, dtype=np.float32)
            return np.interp(positions - lo, np.arange(len(buf)), buf).astype(np.float32)
