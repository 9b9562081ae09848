"""Text to speech through a pluggable engine, and the staff prompts rendered once.

The default engine is espeak-ng from Debian with its `cmn-latn-pinyin` voice (the plain
`cmn` voice reads most characters wrongly). Another engine (e.g. piper, with a voice
provisioned onto the unit) only needs `name` and `render`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile

from edge.audio.clips import resample
from edge.audio.tones import Samples
from edge.logs import log

logger = logging.getLogger("edge.audio.tts")

# What staff hear after pressing the panic button (Mandarin; English for the log).
PROMPTS: dict[str, tuple[str, str]] = {
    "alarm_sent": ("报警已发送", "alarm sent"),
    "alarm_saved_link_down": ("网络中断，报警已保存，恢复后自动发送",
                              "link down: alarm saved, it will be sent when the link is back"),
    "alarm_received": ("乡镇已收到报警", "the township received the alarm"),
}


class TtsError(RuntimeError):
    pass


class Engine(Protocol):
    name: str

    def render(self, text: str) -> tuple[Samples, int]: ...


class EspeakNg:
    def __init__(self, voice: str, timeout_s: float = 20.0) -> None:
        self.voice = voice
        self.name = f"espeak-ng:{voice}"
        self._timeout_s = timeout_s

    def render(self, text: str) -> tuple[Samples, int]:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise TtsError("espeak-ng is not installed (apt-get install espeak-ng)")
        try:
            done = subprocess.run([exe, "-v", self.voice, "--stdout", text],
                                  capture_output=True, timeout=self._timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TtsError(f"espeak-ng took over {self._timeout_s} s") from exc
        if done.returncode != 0 or not done.stdout:
            raise TtsError(f"espeak-ng failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()[:200]}")
        audio, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
        return audio.mean(axis=1).astype(np.float32), int(rate)


class Speech:
    """Renders text at the player's rate; `cached=True` keeps the result on disk under
    `cache_dir`, keyed by engine and text, so a prompt is rendered once per unit."""

    def __init__(self, engine: Engine, cache_dir: Path, rate: int) -> None:
        self.engine = engine
        self._dir = cache_dir
        self._rate = rate
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._memory: dict[str, Samples] = {}
        cache_dir.mkdir(parents=True, exist_ok=True)

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.engine.name}\0{self._rate}\0{text}".encode()).hexdigest()

    def render(self, text: str, *, cached: bool = False) -> Samples:
        if not cached:
            samples, rate = self.engine.render(text)
            return resample(samples, rate, self._rate)
        key = self._key(text)
        with self._render_lock:  # one rendering per text, even when asked twice at once
            with self._lock:
                if key in self._memory:
                    return self._memory[key]
            return self._render_cached(key, text)

    def _render_cached(self, key: str, text: str) -> Samples:
        path = self._dir / f"{key}.wav"
        samples: Samples
        if path.exists():
            samples = soundfile.read(str(path), dtype="float32")[0].astype(np.float32)
        else:
            raw, rate = self.engine.render(text)
            samples = resample(raw, rate, self._rate)
            tmp = path.with_suffix(".tmp")
            soundfile.write(str(tmp), samples, self._rate, subtype="PCM_16", format="WAV")
            os.replace(tmp, path)
            log(logger, "info", "tts.cached", text=text,
                seconds=round(len(samples) / self._rate, 2))
        with self._lock:
            self._memory[key] = samples
        return samples

    def ready(self, text: str) -> Samples | None:
        """The cached rendering if it is in memory; never renders (for the alarm path)."""
        with self._lock:
            return self._memory.get(self._key(text))
