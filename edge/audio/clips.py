"""The clip library: audio files the township uploads, kept on the unit by id.

`<root>/<id>.clip` holds the file as uploaded, `<root>/<id>.sha256` its hash. An upload
arrives in chunks (`clip.put`) into `<root>/.incoming/<id>.part`; only when the last
chunk makes the file whole - the declared size, the declared sha256, and audio that
libsndfile can read - is it fsynced and renamed into place. A half-received clip is
never playable, and a failed upload leaves the clip it would have replaced untouched.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from edge.audio.sound import FileSound
from edge.audio.tones import Samples
from edge.contract.commands import ClipPut
from edge.contract.events import Text, text
from edge.store import durable, private

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_UPLOADS = 4


class ClipError(ValueError):
    def __init__(self, code: str, message: Text) -> None:
        super().__init__(message.en)
        self.code = code
        self.message = message


def _rejected(zh: str, en: str) -> ClipError:
    return ClipError("clip_rejected", text(zh, en))


@dataclass
class _Upload:
    sha256: str
    size: int
    chunks: int
    received: int = 0
    written: int = 0
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)


class ClipLibrary:
    def __init__(self, root: Path, max_bytes: int, *, total_bytes: int, max_clips: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.total_bytes = total_bytes
        self.max_clips = max_clips
        self._incoming = root / ".incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        for stale in self._incoming.iterdir():  # uploads do not survive a restart
            stale.unlink()
        self._lock = threading.Lock()
        self._uploads: dict[str, _Upload] = {}
        # What the station reports it holds (the state's `clips`): id -> sha256[:16].
        self._held: dict[str, str] = {}
        for clip in sorted(root.glob("*.clip")):
            try:
                digest = (root / f"{clip.stem}.sha256").read_text(encoding="ascii").strip()
            except OSError:
                continue  # never finished: load() refuses it too
            if _ID.fullmatch(clip.stem) and len(digest) == 64:
                self._held[clip.stem] = digest[:16]
        # Called (outside the lock) after the library changed: the uplink republishes the
        # state, so the township sees what the station holds.
        self.on_change: Callable[[], None] | None = None

    def _path(self, clip_id: str, suffix: str, where: Path | None = None) -> Path:
        """The file for `clip_id`; an id that could name anything else is refused here
        too, whatever the command schema already checked."""
        base = where or self.root
        if not _ID.fullmatch(clip_id):
            raise _rejected(f"片段编号无效：{clip_id!r}", f"invalid clip id {clip_id!r}")
        path = base / f"{clip_id}{suffix}"
        if path.resolve().parent != base.resolve():
            raise _rejected(f"片段编号无效：{clip_id!r}", f"invalid clip id {clip_id!r}")
        return path

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.clip"))

    def held(self) -> dict[str, str]:
        """Every complete clip: id -> the first 16 hex digits of its sha256."""
        return dict(self._held)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def exists(self, clip_id: str) -> bool:
        return self._path(clip_id, ".clip").exists()

    # --- upload ----------------------------------------------------------------------

    def put_chunk(self, cmd: ClipPut) -> dict[str, object]:
        with self._lock:
            result = self._put_chunk_locked(cmd)
        if result.get("complete"):
            self._changed()
        return result

    def _put_chunk_locked(self, cmd: ClipPut) -> dict[str, object]:
        try:
            return self._put_chunk(cmd)
        except ClipError:
            self._abandon(cmd.clip_id)
            raise
        except OSError as exc:  # disk full, SD card failing
            self._abandon(cmd.clip_id)
            raise _rejected(f"无法保存片段：{exc.strerror}",
                            f"cannot store the clip: {exc}") from exc

    def _put_chunk(self, cmd: ClipPut) -> dict[str, object]:
        part = self._path(cmd.clip_id, ".part", self._incoming)
        if cmd.size > self.max_bytes:
            raise _rejected(f"片段过大（{cmd.size} 字节，上限 {self.max_bytes}）",
                            f"clip is {cmd.size} bytes, limit is {self.max_bytes}")
        upload = self._uploads.get(cmd.clip_id)
        if cmd.chunk == 0:
            if upload is None and len(self._uploads) >= MAX_UPLOADS:
                raise _rejected(f"同时上传的片段过多（上限 {MAX_UPLOADS}）",
                                f"too many uploads at once (limit {MAX_UPLOADS})")
            self._check_room(cmd)
            upload = _Upload(cmd.sha256, cmd.size, cmd.chunks)
            self._uploads[cmd.clip_id] = upload
            part.write_bytes(b"")
        elif upload is None or cmd.chunk != upload.received:
            expected = 0 if upload is None else upload.received
            raise ClipError("clip_interrupted", text(
                f"分块顺序错误：收到第 {cmd.chunk} 块，应为第 {expected} 块；请从第 0 块重新上传",
                f"chunk {cmd.chunk} out of order, expected chunk {expected} (the station "
                f"restarted, or a chunk was lost); restart the upload at chunk 0"))
        elif (upload.sha256, upload.size, upload.chunks) != (cmd.sha256, cmd.size, cmd.chunks):
            raise _rejected("分块的 sha256/size/chunks 与第 0 块不一致",
                            "sha256/size/chunks differ from chunk 0's")
        if upload.written + len(cmd.data) > upload.size:
            raise _rejected(f"数据超过声明的大小 {upload.size} 字节",
                            f"data exceeds the declared size of {upload.size} bytes")
        with open(part, "ab") as f:
            f.write(cmd.data)
        upload.hasher.update(cmd.data)
        upload.written += len(cmd.data)
        upload.received += 1
        if upload.received < upload.chunks:
            return {"clip_id": cmd.clip_id, "received": upload.received,
                    "chunks": upload.chunks, "complete": False}
        return self._finish(cmd.clip_id, part, upload)

    def _check_room(self, cmd: ClipPut) -> None:
        """The library, with this upload in place of the clip it replaces, within bounds
        (uploads in progress count at their declared size)."""
        others = {p.stem: p.stat().st_size for p in self.root.glob("*.clip")
                  if p.stem != cmd.clip_id}
        uploading = {cid: u.size for cid, u in self._uploads.items() if cid != cmd.clip_id}
        count = len(others.keys() | uploading.keys()) + 1
        total = sum(others.values()) + sum(uploading.values()) + cmd.size
        if count > self.max_clips:
            raise _rejected(f"本站片段已满（上限 {self.max_clips} 个），请先删除不用的片段",
                            f"the clip library is full ({self.max_clips} clips, "
                            f"audio.clips_max): delete clips first (clip.delete)")
        if total > self.total_bytes:
            raise _rejected(f"本站片段存储已满（上限 {self.total_bytes} 字节），请先删除不用的片段",
                            f"the clips would take {total} bytes, more than "
                            f"audio.clips_total_bytes = {self.total_bytes}: delete clips first "
                            f"(clip.delete)")

    def _finish(self, clip_id: str, part: Path, upload: _Upload) -> dict[str, object]:
        if upload.written != upload.size:
            raise _rejected(f"片段不完整：{upload.written}/{upload.size} 字节",
                            f"clip truncated: {upload.written} of {upload.size} bytes")
        digest = upload.hasher.hexdigest()
        if digest != upload.sha256:
            raise _rejected("片段 sha256 校验失败", f"sha256 mismatch: got {digest}")
        try:
            info = soundfile.info(str(part))
        except Exception as exc:  # libsndfile says why in its own words
            raise _rejected("片段不是可播放的音频", f"not audio this unit can play: {exc}") \
                from exc
        durable.settle(part, self._path(clip_id, ".clip"))
        durable.write(self._path(clip_id, ".sha256"), digest.encode("ascii"), mode=private.MODE)
        del self._uploads[clip_id]
        self._held[clip_id] = digest[:16]
        return {"clip_id": clip_id, "received": upload.received, "chunks": upload.chunks,
                "complete": True, "sha256": digest, "duration_s": round(info.duration, 3)}

    def _abandon(self, clip_id: str) -> None:
        self._uploads.pop(clip_id, None)
        if _ID.fullmatch(clip_id):
            (self._incoming / f"{clip_id}.part").unlink(missing_ok=True)

    # --- use -------------------------------------------------------------------------

    def delete(self, clip_id: str) -> bool:
        with self._lock:
            path = self._path(clip_id, ".clip")
            found = path.exists()
            path.unlink(missing_ok=True)
            self._path(clip_id, ".sha256").unlink(missing_ok=True)
            self._held.pop(clip_id, None)
        if found:
            self._changed()
        return found

    def load(self, clip_id: str, rate: int) -> FileSound:
        """The clip, streamed at `rate`, after checking it is the file uploaded."""
        path = self._path(clip_id, ".clip")
        try:
            sound = FileSound(path, rate)  # open first: a replacement cannot swap it now
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            expected = self._path(clip_id, ".sha256").read_text(encoding="ascii").strip()
        except (FileNotFoundError, soundfile.LibsndfileError) as exc:
            raise ClipError("unknown_clip", text(f"本站没有片段 {clip_id}",
                                                 f"no clip {clip_id} at this station")) from exc
        if digest != expected:
            sound.close()
            raise ClipError("unknown_clip", text(f"片段 {clip_id} 已损坏，请重新上传",
                                                 f"clip {clip_id} is corrupt; upload it again"))
        return sound


def resample(x: Samples, source: int, target: int) -> Samples:
    """Linear interpolation: plenty for speech through a village horn speaker."""
    if source == target or not len(x):
        return x
    n = round(len(x) * target / source)
    positions = np.arange(n, dtype=np.float64) * (source / target)
    return np.interp(positions, np.arange(len(x)), x).astype(np.float32)
