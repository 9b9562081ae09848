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

# A pixel with any colour channel at 250 or above is clipped.
UNCLIPPED_LOW, UNCLIPPED_HIGH = (0, 0, 0), (249, 249, 249)
# Working pixels around a box absorbed into the background (the blur's and the box's slack).
ABSORB_MARGIN = 2
# With more than this fraction of the frame differing, the light may have changed.
LIGHT_SUSPECT = 0.002
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
        # None when nothing is masked: no mask pass at all.
        self._keep = cv2.bitwise_not(masked) if cfg.masks else None
        self._keep_count = max(1, self._w * self._h - int(np.count_nonzero(masked)))
        self._min_area = cfg.motion_min_area * self._w * self._h
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        shape = (self._h, self._w)
        # Working buffers, reused every frame rather than allocated.
        self._small = np.empty((*shape, 3), np.uint8)
        self._grey = np.empty(shape, np.uint8)
        self._matched = np.empty(shape, np.uint8)
        self._reference = np.empty(shape, np.uint8)
        self._binary = np.empty(shape, np.uint8)
        self._grown = np.empty(shape, np.uint8)
        self._unclipped: np.ndarray[Any, Any] = np.empty(shape, np.uint8)
        self._unclipped_before: np.ndarray[Any, Any] = np.full(shape, 255, np.uint8)
        self._background: np.ndarray[Any, np.dtype[np.float32]] | None = None

    def detect(self, frame: Frame) -> Motion:
        # Nearest-neighbour sampling keeps the same pixels frame after frame (a still
        # scene stays still) at a tenth of the cost of an area average; the 3x3 blur
        # then takes the sensor noise down.
        small = cv2.resize(frame, (self._w, self._h), self._small,
                           interpolation=cv2.INTER_NEAREST)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY, self._grey)
        cv2.GaussianBlur(grey, (3, 3), 0, grey)
        # 255 where no colour channel is clipped, now and in the previous frame.
        unclipped = cv2.inRange(small, UNCLIPPED_LOW, UNCLIPPED_HIGH, self._unclipped)
        self._unclipped, self._unclipped_before = self._unclipped_before, unclipped
        unclipped_before = self._unclipped
        if self._background is None:
            self._background = grey.astype(np.float32)
            return Motion([], 0.0)
        background = self._background
        reference = cv2.convertScaleAbs(background, self._reference)
        binary = self._difference(grey, reference)
        changed = cv2.countNonZero(binary) / self._keep_count
        light = False
        if changed > LIGHT_SUSPECT:
            # Match the frame's brightness and contrast to the background's and compare
            # again. An exposure step, a cloud, the IR switch (grey, a gain and an offset)
            # map every pixel through one line: light, not motion. Kept only when it
            # explains most of the difference: a person alone would bias the line.
            cur_mean, cur_std = cv2.meanStdDev(grey, mask=self._keep)
            bg_mean, bg_std = cv2.meanStdDev(reference, mask=self._keep)
            gain = float(bg_std[0, 0] / cur_std[0, 0]) if cur_std[0, 0] > 1.0 else 1.0
            offset = float(bg_mean[0, 0] - gain * cur_mean[0, 0])
            matched = self._difference(
                cv2.convertScaleAbs(grey, self._matched, gain, offset), reference,
                self._matched)
            if cv2.countNonZero(matched) < changed * self._keep_count / 2:
                light = True
                binary = matched
                # Clipped pixels say nothing about a light change: leave them out.
                cv2.bitwise_and(binary, unclipped, binary)
                cv2.bitwise_and(binary, unclipped_before, binary)
        changed = cv2.countNonZero(binary) / self._keep_count
        if changed > self._cfg.light_change_area:
            background[...] = grey
            return Motion([], changed, light_change=True)
        if light:
            # Carry the background into the new light at once: left to the running
            # average, the old light would differ for seconds and read as motion.
            background -= offset
            background *= 1.0 / gain
        cv2.accumulateWeighted(grey, background, self._cfg.background_alpha)
        grown = cv2.dilate(binary, self._kernel, self._grown, iterations=2)
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

    def absorb(self, box: Box) -> None:
        """Take `box` (full-frame pixels) of the last frame into the background at once.

        For motion the detector found no person in: mostly the ghost a person leaves
        where they stood, which the running average would report for seconds, each frame
        a detector run. Something that moves on makes new motion where it goes.
        """
        if self._background is None:
            return
        s = self._scale
        x0, y0 = max(0, int(box[0] / s) - ABSORB_MARGIN), max(0, int(box[1] / s) - ABSORB_MARGIN)
        x1 = min(self._w, int(np.ceil(box[2] / s)) + ABSORB_MARGIN)
        y1 = min(self._h, int(np.ceil(box[3] / s)) + ABSORB_MARGIN)
        self._background[y0:y1, x0:x1] = self._grey[y0:y1, x0:x1]

    def _difference(self, grey: np.ndarray[Any, Any], reference: np.ndarray[Any, Any],
                    out: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
        """255 where `grey` differs from `reference` by more than the threshold (and is
        not masked), in `out` (default: the reused binary buffer)."""
        binary = cv2.absdiff(grey, reference, self._binary if out is None else out)
        cv2.threshold(binary, self._cfg.motion_threshold, 255, cv2.THRESH_BINARY, binary)
        if self._keep is not None:
            cv2.bitwise_and(binary, self._keep, binary)
        return binary

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
