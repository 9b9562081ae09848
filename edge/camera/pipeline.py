"""The camera stage: frames → motion → person detector on motion crops → one event per incident.

One named thread. The frame source is retried with back-off when it cannot open or drops,
and the problem is on the state topic meanwhile; nothing else in the unit waits for it.
An incident ends after `cooldown_s` without a person; only its first sighting is sent.
Motion the detector finds no person in is counted in health, never sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.camera.detector import Detection, PersonDetector
from edge.camera.motion import Box, MotionDetector
from edge.camera.sources import Frame, FrameSource, SourceError
from edge.clock import clock_synced
from edge.config import ArmWindow, CameraSection
from edge.contract import commands
from edge.health import Health
from edge.link.dispatch import Handlers
from edge.logs import log

logger = logging.getLogger("edge.camera")

PROBLEM = "camera_unavailable"


@dataclass(frozen=True)
class Sighting:
    score: float
    box: tuple[float, float, float, float]  # normalised xmin, ymin, xmax, ymax
    zone: str
    jpeg: bytes

    def snapshot_b64(self) -> str:
        return base64.b64encode(self.jpeg).decode("ascii")


class Arming:
    """Armed by camera.schedule (local wall time), overridden by township commands.

    An override lasts `for_s` seconds, or (for_s = 0) until the schedule next changes
    (with no schedule: until the next command). With the wall clock not yet synced the
    schedule cannot be trusted: armed.
    """

    def __init__(self, schedule: list[ArmWindow],
                 now: Callable[[], dt.datetime] = dt.datetime.now,
                 synced: Callable[[], bool] = clock_synced,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._schedule = schedule
        self._now, self._synced, self._clock = now, synced, clock
        self._lock = threading.Lock()
        # (armed, monotonic deadline, wall-clock deadline)
        self._override: tuple[bool, float | None, dt.datetime | None] | None = None

    def _scheduled_at(self, when: dt.datetime) -> bool:
        if not self._schedule or not self._synced():
            return True
        hhmm = when.strftime("%H:%M")
        return any((w.start <= hhmm < w.end) if w.start <= w.end
                   else (hhmm >= w.start or hhmm < w.end) for w in self._schedule)

    def armed(self) -> bool:
        now = self._now()
        with self._lock:
            if self._override is not None:
                armed, until, until_wall = self._override
                if not ((until is not None and self._clock() >= until)
                        or (until_wall is not None and now >= until_wall)):
                    return armed
                self._override = None
        return self._scheduled_at(now)

    def set(self, armed: bool, for_s: float = 0) -> None:
        until = self._clock() + for_s if for_s else None
        until_wall = None if for_s else self._next_change()
        with self._lock:
            self._override = (armed, until, until_wall)

    def _next_change(self) -> dt.datetime | None:
        """The next minute at which the schedule changes, within a day; None if never."""
        now = self._now()
        current = self._scheduled_at(now)
        start = now.replace(second=0, microsecond=0)
        for minute in range(1, 24 * 60 + 1):
            when = start + dt.timedelta(minutes=minute)
            if self._scheduled_at(when) != current:
                return when
        return None


def zone_of(box: tuple[float, float, float, float], cfg: CameraSection) -> str | None:
    """The zone a person stands in (the bottom middle of the box), None if outside all."""
    if not cfg.zones:
        return "frame"
    foot = ((box[0] + box[2]) / 2, box[3])
    for zone in cfg.zones:
        contour = np.array(zone.polygon, np.float32).reshape(-1, 1, 2)
        if cv2.pointPolygonTest(contour, foot, False) >= 0:
            return zone.name
    return None


def snapshot(frame: Frame, box: Box, max_bytes: int) -> bytes:
    """The frame with the box drawn, as a JPEG no larger than `max_bytes`."""
    image = frame.copy()
    cv2.rectangle(image, box[:2], (box[2] - 1, box[3] - 1), (0, 0, 255), 2)
    while True:
        for quality in (85, 70, 55, 40, 25):
            ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(data) <= max_bytes:
                return bytes(data)
        if image.shape[1] <= 80:
            raise ValueError(f"cannot fit a snapshot in {max_bytes} bytes")
        image = np.asarray(cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                                      interpolation=cv2.INTER_AREA), np.uint8)


class CameraPipeline:
    def __init__(self, cfg: CameraSection, source: FrameSource, detector: PersonDetector,
                 health: Health, on_person: Callable[[Sighting], None],
                 arming: Arming | None = None) -> None:
        self._cfg = cfg
        self._source = source
        self._detector = detector
        self._health = health
        self._on_person = on_person
        self.arming = arming or Arming(cfg.schedule)
        self._motion = MotionDetector(cfg, cfg.width, cfg.height)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._last_person: float | None = None  # monotonic time of the last sighting
        self.ended = threading.Event()  # a replay ran out of frames

    def start(self) -> None:
        self._thread.start()

    def register(self, handlers: Handlers) -> None:
        handlers.register((commands.CameraArm, commands.CameraDisarm), self._arm)

    def _arm(self, cmd: commands.CameraArm | commands.CameraDisarm) -> dict[str, Any]:
        self.arming.set(isinstance(cmd, commands.CameraArm), cmd.for_s)
        return {"armed": self.arming.armed(), "for_s": cmd.for_s}

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if not self._thread.is_alive():
            return
        self._thread.join(0.5)
        if self._thread.is_alive():
            log(logger, "warning", "camera.stop_slow", source=self._source.name,
                action="the camera driver is blocked; it is abandoned at exit")

    def _run(self) -> None:
        # The source is only ever touched from this thread, closed here too.
        try:
            self._watch()
        finally:
            self._source.close()

    def _watch(self) -> None:
        backoff = self._cfg.retry_min_s
        period = 1.0 / self._cfg.fps
        opened = failing = False
        next_frame = time.monotonic()
        while not self._stop.is_set():
            try:
                if not opened:
                    self._source.open()
                    opened = True
                frame = self._source.read()
            except SourceError as exc:
                self._source.close()
                opened, failing = False, True
                self._health.set(PROBLEM, f"摄像头不可用：{exc}，正在重试",
                                 f"camera unavailable: {exc}; retrying",
                                 action="check the camera cable / power / RTSP address")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._cfg.retry_max_s)
                continue
            if frame is None:
                log(logger, "info", "camera.replay_ended", source=self._source.name)
                self.ended.set()
                self._stop.wait()
                break
            if failing:
                self._health.clear(PROBLEM)
                backoff, failing = self._cfg.retry_min_s, False
            try:
                self.process(frame)
            except Exception:
                # One bad frame must not end watching; the log has the trace.
                logger.exception("camera.frame_failed")
                self._health.count("camera_frame_errors")
            next_frame = max(next_frame + period, time.monotonic() - period)
            self._stop.wait(max(0.0, next_frame - time.monotonic()))

    def process(self, frame: Frame) -> None:
        """One frame through motion → (when armed and moving) detector → event."""
        self._health.count("camera_frames")
        motion = self._motion.detect(frame)
        if motion.light_change:
            self._health.count("camera_light_changes")
            log(logger, "info", "camera.light_change", changed=round(motion.changed, 3))
            return
        if not motion.boxes or not self.arming.armed():
            return
        self._health.count("camera_motion")
        best: tuple[Detection, str] | None = None
        for region in motion.boxes[: self._cfg.max_regions]:
            self._health.count("camera_detector_runs")
            found = self._detector.detect(frame, region)
            if not found:
                # No person there: into the background with it, so that a ghost left
                # where someone stood does not cost a detector run every frame.
                self._motion.absorb(region)
            for det in found:
                zone = zone_of(self._normalised(det.box), self._cfg)
                if zone is not None and (best is None or det.score > best[0].score):
                    best = (det, zone)
        if best is None:
            self._health.count("camera_motion_without_person")
            return
        now = time.monotonic()
        last, self._last_person = self._last_person, now
        if last is not None and now - last < self._cfg.cooldown_s:
            return  # the same incident
        det, zone = best
        sighting = Sighting(round(det.score, 3), self._normalised(det.box), zone,
                            snapshot(frame, det.box, self._cfg.snapshot_max_bytes))
        self._health.count("camera_person_events")
        log(logger, "info", "camera.person", score=sighting.score, zone=zone,
            box=sighting.box, snapshot_bytes=len(sighting.jpeg))
        self._on_person(sighting)

    def _normalised(self, box: Box) -> tuple[float, float, float, float]:
        w, h = self._cfg.width, self._cfg.height
        return (round(box[0] / w, 4), round(box[1] / h, 4),
                round(min(box[2], w) / w, 4), round(min(box[3], h) / h, 4))

    def status(self) -> dict[str, Any]:
        return {"source": self._source.name, "armed": self.arming.armed(),
                "model": str(self._detector.model)}
