"""Cheap motion detection that decides where and when the person detector runs.

On a grey frame scaled down to `motion_width`: a running-average background; the frame's
brightness matched to the background's (so a cloud or an exposure change that brightens
everything does not differ; clipped pixels are then left out); absolute difference,
threshold, masks, dilation, contours.
When more than `light_change_area` of the frame still changes at once (IR day/night
switch, lights on) it is a light change, not motion: the background is re-learned from
this frame and nothing is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.camera.sources import Frame
from edge.config import CameraSection, Polygon

SATURATED = 250
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in full-frame pixels, x1/y1 exclusive


@dataclass(frozen=True)
class Motion:
    boxes: list[Box]  # largest first
    changed: float  # fraction of the unmasked frame that changed
    light_change: bool = False


def polygon_mask(polygons: list[Polygon], width: int, height: int) -> np.ndarray[Any, Any]:
    """255 inside any of `polygons` (normalised coordinates), 0 elsewhere."""
    mask = np.zeros((height, width), np.uint8)
    for poly in polygons:
        pts = np.array([[round(x * (width - 1)), round(y * (height - 1))] for x, y in poly],
                       np.int32)
        cv2.fillPoly(mask, [pts], 255)
    return mask


class MotionDetector:
    def __init__(self, cfg: CameraSection, frame_width: int, frame_height: int) -> None:
        self._cfg = cfg
        self._full = (frame_width, frame_height)
        self._w = min(cfg.motion_width, frame_width)
        self._h = max(1, round(frame_height * self._w / frame_width))
        self._scale = frame_width / self._w
        masked = polygon_mask(cfg.masks, self._w, self._h)
        self._keep = cv2.bitwise_not(masked)
        self._keep_count = max(1, int(np.count_nonzero(self._keep)))
        self._min_area = cfg.motion_min_area * self._w * self._h
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        self._background: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self._clipped = np.zeros((self._h, self._w), bool)

    def detect(self, frame: Frame) -> Motion:
        small = cv2.resize(frame, (self._w, self._h), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (3, 3), 0)
        current = grey.astype(np.float32)
        # Pixels with a clipped colour channel, now or in the previous frame.
        clipped = np.max(small, axis=2) >= SATURATED
        clipped_before, self._clipped = self._clipped, clipped
        if self._background is None:
            self._background = current
            return Motion([], 0.0)
        background = self._background
        # Match overall brightness before comparing: a global gain is light, not motion.
        bg_mean = float(cv2.mean(background, self._keep)[0])
        cur_mean = float(cv2.mean(current, self._keep)[0])
        gain = bg_mean / cur_mean if cur_mean > 1.0 else 1.0
        diff = cv2.absdiff(current * gain, background)
        _, binary = cv2.threshold(diff, self._cfg.motion_threshold, 255, cv2.THRESH_BINARY)
        binary = cv2.bitwise_and(binary.astype(np.uint8), self._keep)
        if abs(gain - 1.0) > 0.05:
            # Clipped pixels say nothing about a gain change: leave them out.
            binary[clipped | clipped_before] = 0
        changed = cv2.countNonZero(binary) / self._keep_count
        if changed > self._cfg.light_change_area:
            self._background = current
            return Motion([], changed, light_change=True)
        cv2.accumulateWeighted(current, background, self._cfg.background_alpha)
        grown = cv2.dilate(binary, self._kernel, iterations=2)
        contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            # Judge size by the pixels that changed, not by the dilated blob: specks of
            # noise or leftover clipping would otherwise grow into "motion".
            changed_here = binary[y:y + h, x:x + w]
            if cv2.countNonZero(changed_here) < self._min_area:
                continue
            # The box of the changed pixels themselves: dilation only joined them up.
            dx, dy, dw, dh = cv2.boundingRect(changed_here)
            boxes.append(self._to_full(x + dx, y + dy, x + dx + dw, y + dy + dh))
        return Motion(_merge(boxes), changed)

    def _to_full(self, x0: int, y0: int, x1: int, y1: int) -> Box:
        s = self._scale
        fw, fh = self._full
        return (max(0, int(x0 * s)), max(0, int(y0 * s)),
                min(fw, int(np.ceil(x1 * s))), min(fh, int(np.ceil(y1 * s))))


def _merge(boxes: list[Box]) -> list[Box]:
    """Merge overlapping boxes (one person's limbs are often separate contours)."""
    merged = sorted(boxes, key=_area, reverse=True)
    changed = True
    while changed:
        changed = False
        for i in range(len(merged)):
            for j in range(i + 1, len(merged)):
                a, b = merged[i], merged[j]
                if a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]:
                    merged[i] = (min(a[0], b[0]), min(a[1], b[1]),
                                 max(a[2], b[2]), max(a[3], b[3]))
                    del merged[j]
                    changed = True
                    break
            if changed:
                break
    return sorted(merged, key=_area, reverse=True)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
