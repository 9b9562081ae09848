"""Where frames come from: one seam, chosen by camera.source.

Every source opens, yields BGR uint8 frames (height, width, 3) and closes. A source that
cannot open or loses its camera raises `SourceError`; the pipeline retries with back-off.
`read()` returns None only when a replay has ended.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.config import CameraSection

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
OPEN_TIMEOUT_MS = 10000
READ_TIMEOUT_MS = 5000

Frame = np.ndarray[Any, np.dtype[np.uint8]]


class SourceError(OSError):
    """The camera cannot be opened or stopped delivering frames."""


class FrameSource(Protocol):
    name: str

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


def _fit(frame: Frame, width: int, height: int) -> Frame:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    return np.asarray(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))


class OpenCVSource:
    """A V4L2 camera (/dev/videoN) or an RTSP stream, through OpenCV."""

    def __init__(self, target: int | str, width: int, height: int, fps: float) -> None:
        self._target = target
        self._width, self._height = width, height
        self._fps = fps
        self._skip = 0
        self._cap: cv2.VideoCapture | None = None
        self.name = f"/dev/video{target}" if isinstance(target, int) else _redact(target)

    def open(self) -> None:
        if isinstance(self._target, int):
            cap = cv2.VideoCapture(self._target, cv2.CAP_V4L2)
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._height)
        else:
            # Bounded waits, so a dead IP camera is reported and retried, not waited on.
            cap = cv2.VideoCapture(self._target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open camera {self.name}")
        # A stream runs at its own rate: drop the frames between the ones looked at, or
        # they queue up and what is analysed falls ever further behind real time.
        source_fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self._skip = max(0, round(source_fps / self._fps) - 1) if source_fps > 0 else 0
        self._cap = cap

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"camera {self.name} is not open")
        for _ in range(self._skip):
            if not self._cap.grab():
                raise SourceError(f"camera {self.name} stopped delivering frames")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            raise SourceError(f"camera {self.name} stopped delivering frames")
        return _fit(np.asarray(frame), self._width, self._height)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class Picamera2Source:
    """The Raspberry Pi camera through picamera2, where it is installed."""

    def __init__(self, width: int, height: int) -> None:
        self._width, self._height = width, height
        self._cam: Any = None
        self.name = "picamera2"

    def open(self) -> None:
        try:
            module = importlib.import_module("picamera2")
        except ImportError as exc:
            raise SourceError("camera.source = 'picamera2' but picamera2 is not installed "
                              "(apt install python3-picamera2)") from exc
        try:
            cam = module.Picamera2()
            cam.configure(cam.create_video_configuration(
                main={"size": (self._width, self._height), "format": "BGR888"}))
            cam.start()
        except Exception as exc:  # picamera2 raises plain RuntimeError/IndexError
            raise SourceError(f"cannot open the Pi camera: {exc}") from exc
        self._cam = cam

    def read(self) -> Frame | None:
        if self._cam is None:
            raise SourceError("the Pi camera is not open")
        try:
            frame = self._cam.capture_array("main")
        except Exception as exc:
            raise SourceError(f"the Pi camera stopped delivering frames: {exc}") from exc
        return np.ascontiguousarray(frame[:, :, :3])

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None


class FolderSource:
    """Replay: images in name order from a folder, or the frames of a video file."""

    def __init__(self, path: Path, width: int, height: int, loop: bool = False) -> None:
        self.path = path
        self._width, self._height = width, height
        self._loop = loop
        self._files: list[Path] = []
        self._next = 0
        self._video: cv2.VideoCapture | None = None
        self.name = str(path)

    def open(self) -> None:
        if self.path.is_file():
            video = cv2.VideoCapture(str(self.path))
            if not video.isOpened():
                raise SourceError(f"cannot open video {self.path}")
            self._video = video
            return
        try:
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise SourceError(f"cannot read frames from {self.path}: {exc.strerror}") from exc
        if not files:
            raise SourceError(f"no images in {self.path}")
        self._files, self._next = files, 0

    def read(self) -> Frame | None:
        if self._video is not None:
            ok, frame = self._video.read()
            if not ok and self._loop:
                self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self._video.read()
            return _fit(np.asarray(frame), self._width, self._height) if ok else None
        if self._next >= len(self._files):
            if not self._loop:
                return None
            self._next = 0
        path = self._files[self._next]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"frame {path} is missing or unreadable")
        self._next += 1
        return _fit(np.asarray(image, np.uint8), self._width, self._height)

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
        self._files = []


def make_source(cfg: CameraSection) -> FrameSource:
    if cfg.source == "v4l2":
        return OpenCVSource(cfg.device, cfg.width, cfg.height, cfg.fps)
    if cfg.source == "rtsp":
        return OpenCVSource(cfg.url, cfg.width, cfg.height, cfg.fps)
    if cfg.source == "picamera2":
        return Picamera2Source(cfg.width, cfg.height)
    return FolderSource(Path(cfg.path).expanduser(), cfg.width, cfg.height, loop=cfg.loop)


def _redact(url: str) -> str:
    """rtsp://user:password@host/... → rtsp://user:***@host/... for logs and state."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
