"""Text to speech through a pluggable engine, and the staff prompts rendered once.

An engine turns texts into what its voice is handed (`scripts`, one string per
rendering) and renders each (`render`). The default is espeak-ng from Debian with its
`cmn-latn-pinyin` voice, handed pinyin that `edge.audio.reading` made (the voice's own
character step misreads polyphones, and the plain `cmn` voice reads most characters
wrongly); English words go to its English voice. A better voice provisioned onto the
unit (e.g. piper) only needs `name`, `scripts`, `script` and `render`. `pingan-edge tts TEXT
--pinyin` prints the script.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Protocol
from xml.sax.saxutils import escape

import numpy as np
import soundfile

from edge.audio.clips import resample
from edge.audio.normalise import PIECE_CHARS
from edge.audio.sound import FileSound
from edge.audio.tones import Samples
from edge.config import BACKGROUND_NICE, AudioSection
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

    def scripts(self, texts: list[str]) -> list[list[str]]:
        """What the voice is handed for each text, one string per `render` (each short
        enough to hold in memory as samples); empty when nothing can be said."""
        ...

    def script(self, text: str) -> list[str]: ...

    def render(self, piece: str) -> tuple[Samples, int]: ...


class EspeakNg:
    """espeak-ng, its input read as SSML (`-m`). A `*-latn-pinyin` voice is handed
    pinyin (`edge.audio.reading`); any other voice the text as written."""

    def __init__(self, voice: str, timeout_s: float = 20.0, *, english: str = "en") -> None:
        self.voice = voice
        self.english = english
        self.name = f"espeak-ng:{voice}"
        self._timeout_s = timeout_s

    def scripts(self, texts: list[str]) -> list[list[str]]:
        if self.voice.endswith("latn-pinyin"):
            return read_aloud(texts, voice=self.voice, english=self.english)
        return [[escape(p) for p in pieces(text)] for text in texts]

    def script(self, text: str) -> list[str]:
        return self.scripts([text])[0]

    def render(self, piece: str) -> tuple[Samples, int]:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise TtsError("espeak-ng is not installed (apt-get install espeak-ng)")
        try:
            # The text on stdin: on the command line, one starting with "-" is an option.
            argv = [exe, "-m", "-v", self.voice, "--stdout"]
            done = subprocess.run(_background(argv), input=piece.encode(errors="replace"),
                                  capture_output=True, timeout=self._timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise TtsError(f"espeak-ng took over {self._timeout_s} s") from exc
        if done.returncode != 0 or not done.stdout:
            raise TtsError(f"espeak-ng failed ({done.returncode}): "
                           f"{done.stderr.decode(errors='replace').strip()[:200]}")
        audio, rate = soundfile.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
        return audio.mean(axis=1).astype(np.float32), int(rate)


def _background(argv: list[str]) -> list[str]:
    """At a lower CPU priority: on two cores, speech must not slow the alarm path."""
    nice = shutil.which("nice")
    return [nice, "-n", str(BACKGROUND_NICE), *argv] if nice else argv


def read_aloud(texts: list[str], *, voice: str, english: str,
               timeout_s: float = 60.0) -> list[list[str]]:
    """`edge.audio.reading.script` of each text, worked out in one child process:
    pypinyin's dictionaries take ~70 MB and ~1 s of CPU to load, which the station's own
    process (whose alarm path shares its interpreter) does not carry; they go when it
    ends."""
    argv = [sys.executable, "-m", "edge.audio.reading", "--voice", voice, "--english", english]
    # Text that is not valid Unicode (a lone surrogate from JSON) is read as far as it is.
    sent = json.dumps([t.encode(errors="replace").decode() for t in texts])
    try:
        done = subprocess.run(_background(argv), input=sent.encode(), capture_output=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TtsError(f"reading the text took over {timeout_s} s") from exc
    try:
        said = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        said = None
    if not (isinstance(said, list) and len(said) == len(texts)
            and all(isinstance(s, list) and all(isinstance(p, str) for p in s) for s in said)):
        raise TtsError(f"reading the text failed ({done.returncode}): "
                       f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    return said


def engine(audio: AudioSection) -> Engine:
    """The engine `audio` configures: the station's and `pingan-edge tts`'s, so what
    that prints is what the station says."""
    return EspeakNg(audio.tts_voice)


# After punctuation, but not inside a number (3.5, 1,000, 15:00).
_BREAK_AFTER = re.compile(r"(?<=[。！？；：，、\n])|(?<=[,.!?;:])(?!\d)")


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """`text` cut after punctuation into pieces of at most `limit` characters (a run
    longer than that is cut where it reaches it)."""
    out: list[str] = []
    current = ""
    for part in _BREAK_AFTER.split(text):
        while len(part) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(part[:limit])
            part = part[limit:]
        if len(current) + len(part) > limit:
            out.append(current)
            current = ""
        current += part
    if current.strip():
        out.append(current)
    return [p for p in out if p.strip()]


class Speech:
    """Renders text to FLAC files that the player streams (`FileSound`).

    `cached=True` keeps the rendering under `cache_dir`, keyed by engine, rate and what
    the engine is handed (its script: a text whose reading changed renders again),
    and that cache is bounded by `max_bytes` and `max_entries`, least recently used out
    first. Otherwise the rendering goes to `cache_dir/.scratch` and is unlinked at once:
    its open `FileSound` keeps it until the play ends. One rendering is refused past
    `max_render_bytes`. Only the staff prompts are kept in memory (`prompt`, `ready`)."""

    def __init__(self, engine: Engine, cache_dir: Path, rate: int, *, max_bytes: int,
                 max_entries: int, max_render_bytes: int) -> None:
        self.engine = engine
        self._dir = cache_dir
        self._scratch = cache_dir / ".scratch"
        self._rate = rate
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._max_render_bytes = max_render_bytes
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()
        self._prompts: dict[str, Samples] = {}
        self._scratch.mkdir(parents=True, exist_ok=True)
        for stale in self._scratch.iterdir():  # a crash mid-render; nothing plays them now
            stale.unlink()
        for stale in cache_dir.glob("*.tmp"):
            stale.unlink()

    def _key(self, script: list[str]) -> str:
        said = "\n".join(script)
        return hashlib.sha256(f"{self.engine.name}\0{self._rate}\0{said}".encode()).hexdigest()

    def sound(self, text: str, *, cached: bool = False) -> FileSound:
        """`text` as a sound the player streams; renders it unless it is in the cache."""
        return self._sound(self.engine.script(text), cached=cached)

    def _sound(self, script: list[str], *, cached: bool) -> FileSound:
        with self._render_lock:  # one rendering at a time, and once per text
            if not cached:
                path = self._scratch / f"{uuid.uuid4().hex}.flac"
                try:
                    self._render_to(script, path)
                    return FileSound(path, self._rate)
                finally:
                    path.unlink(missing_ok=True)
            path = self._dir / f"{self._key(script)}.flac"
            if path.exists():
                os.utime(path)  # most recently used
                return FileSound(path, self._rate)
            tmp = path.with_suffix(".tmp")
            try:
                self._render_to(script, tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            sound = FileSound(path, self._rate)
            log(logger, "info", "tts.cached", pieces=len(script),
                seconds=round(sound.seconds, 2), bytes=path.stat().st_size)
            self._evict(keep=path)
            return sound

    def _render_to(self, script: list[str], path: Path) -> None:
        out: soundfile.SoundFile | None = None
        try:
            for piece in script:
                samples, rate = self.engine.render(piece)
                if out is None:
                    out = soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1,
                                              format="FLAC", subtype="PCM_16")
                elif rate != out.samplerate:
                    samples = resample(samples, rate, out.samplerate)
                out.write(samples)
                out.flush()
                if path.stat().st_size > self._max_render_bytes:
                    raise TtsError(f"the spoken text is longer than this station renders "
                                   f"({self._max_render_bytes} bytes of audio)")
        finally:
            if out is not None:
                out.close()
        if out is None:
            raise TtsError("nothing to say: the text has no speakable characters")

    def _evict(self, keep: Path) -> None:
        """Least recently used renderings out until the cache fits its bounds."""
        files = []
        for path in self._dir.glob("*.flac"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime_ns, st.st_size, path))
        files.sort()
        total = sum(size for _, size, _ in files)
        count = len(files)
        for _, size, path in files:
            if total <= self._max_bytes and count <= self._max_entries:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            count -= 1
            log(logger, "info", "tts.evicted", file=path.name, bytes=size)

    def prompt(self, text: str) -> Samples:
        """A staff prompt, rendered (cached on disk) and kept in memory for `ready`."""
        return self.prompts([text])[0]

    def prompts(self, texts: list[str]) -> list[Samples]:
        """Staff prompts, read together (one reading for all) and each rendered."""
        out = []
        for text, script in zip(texts, self.engine.scripts(texts), strict=True):
            sound = self._sound(script, cached=True)
            try:
                samples = sound[0:len(sound)]
            finally:
                sound.close()
            with self._lock:
                self._prompts[text] = samples
            out.append(samples)
        return out

    def ready(self, text: str) -> Samples | None:
        """A prompt's samples if `prompt` made them; never renders nor reads (for the
        alarm path)."""
        with self._lock:
            return self._prompts.get(text)
