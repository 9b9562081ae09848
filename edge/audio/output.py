"""The one seam to the sound hardware: PortAudio through sounddevice.

`output = "device"` opens the PortAudio device named by config (name fragment, index or
"" for the default). `output = "null"` points ALSA at a null device that records what is
played to a file (the simulator's speaker); the PortAudio path is the same either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.audio.tones import Samples
from edge.config import AudioSection

NULL_ALSA_CONF = """\
# Written by pingan-edge (audio.output = "null"): no sound card, record what is played.
pcm.!default {{
    type plug
    slave {{
        pcm {{ type file  slave.pcm {{ type null }}  file "|cat >> {played}"  format "raw"
              infile "{mic}" }}
        format S16_LE  rate {rate}  channels 1
    }}
}}
"""


class AudioUnavailable(RuntimeError):
    """The configured audio device cannot be opened; the message says which and why."""


def use_null_device(data_dir: Path, rate: int) -> Path:
    """Send this process's ALSA default device to <data_dir>/speaker.raw. Call before the
    first stream opens; PortAudio is re-initialised so the new config takes effect."""
    played, mic = data_dir / "speaker.raw", data_dir / "mic.raw"
    played.write_bytes(b"")
    if not mic.exists():
        mic.write_bytes(np.zeros(rate, dtype="<i2").tobytes())  # a silent microphone
    conf = data_dir / "alsa-null.conf"
    conf.write_text(NULL_ALSA_CONF.format(played=played, mic=mic, rate=rate), encoding="utf-8")
    os.environ["ALSA_CONFIG_PATH"] = str(conf)
    reinitialise()
    return played


def reinitialise() -> None:
    """Make PortAudio re-read the ALSA configuration (ALSA_CONFIG_PATH)."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


def device_arg(spec: str | int) -> str | int | None:
    if isinstance(spec, int):
        return spec
    return int(spec) if spec.isdigit() else (spec or None)


def check(spec: str | int, kind: str = "output") -> str:
    """The name of the device `spec` selects, or AudioUnavailable saying why not."""
    try:
        import sounddevice as sd

        info: Any = sd.query_devices(device_arg(spec), kind)
        return str(info["name"])
    # OSError: no libportaudio2; ValueError: no such device; PortAudioError (a plain
    # Exception): no devices at all, e.g. no sound card and no ALSA default.
    except Exception as exc:
        raise AudioUnavailable(f"audio {kind} device {spec or 'default'!r}: {exc}") from exc


class Output:
    """A mono float32 output stream, opened when there is something to play."""

    def __init__(self, audio: AudioSection) -> None:
        self.rate = audio.sample_rate
        self.block = max(1, audio.sample_rate * audio.block_ms // 1000)
        self._spec = audio.device
        self._stream: Any = None

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    def open(self) -> None:
        if self._stream is not None:
            return
        try:
            import sounddevice as sd

            stream = sd.OutputStream(device=device_arg(self._spec), samplerate=self.rate,
                                     channels=1, dtype="float32", blocksize=self.block)
            stream.start()
        except Exception as exc:  # as in check(): OSError, ValueError, PortAudioError
            raise AudioUnavailable(
                f"audio output device {self._spec or 'default'!r}: {exc}") from exc
        self._stream = stream

    def write(self, samples: Samples) -> None:
        try:
            self._stream.write(np.ascontiguousarray(samples.reshape(-1, 1)))
        except Exception as exc:  # the device vanished mid-stream (USB unplugged)
            self.close()
            raise AudioUnavailable(f"audio output failed while playing: {exc}") from exc

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                with contextlib.suppress(Exception):  # a vanished device fails to stop too
                    stream.stop()
            finally:
                stream.close()
