"""Push-to-talk: while the broadcast button is held, the microphone plays through the
loudspeaker (through the player, so the siren and emergencies still outrank it), with
the attention chime before and after."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from edge.audio.output import device_arg
from edge.audio.tones import Samples


def _blocks(samples: Samples, block: int) -> Iterator[Samples]:
    for start in range(0, len(samples), block):
        yield samples[start:start + block]


class PushToTalk:
    def __init__(self, device: str | int, rate: int, block: int, chime: Samples) -> None:
        self._device = device
        self._rate = rate
        self._block = block
        self._chime = chime
        self._lock = threading.Lock()
        self._held: threading.Event | None = None

    def press(self) -> Callable[[], Iterator[Samples]] | None:
        """A live source for the player, or None when the button is already held."""
        with self._lock:
            if self._held is not None:
                return None
            held = self._held = threading.Event()
            held.set()
        return lambda: self._live(held)

    def release(self) -> bool:
        with self._lock:
            held, self._held = self._held, None
        if held is None:
            return False
        held.clear()
        return True

    def _live(self, held: threading.Event) -> Iterator[Samples]:
        import sounddevice as sd

        try:
            if not held.is_set():
                return  # released while waiting behind something louder: nothing to say
            yield from _blocks(self._chime, self._block)
            # int16: float32 capture through ALSA's plug layer can drop samples.
            with sd.InputStream(device=device_arg(self._device), samplerate=self._rate,
                                channels=1, dtype="int16", blocksize=self._block) as mic:
                while held.is_set():
                    data, _overflowed = mic.read(self._block)
                    yield data[:, 0].astype(np.float32) / np.float32(32768.0)
            yield from _blocks(self._chime, self._block)
        finally:
            with self._lock:
                if self._held is held:  # dropped (preempted) while still held
                    self._held = None
