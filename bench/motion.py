"""Motion detection: frames/s and accuracy against a Frigate-style reference, same run.

What it measures (one process, OpenCV on ONE thread)
    The ground-truth scene of pingan_sim.motion_scene: 858 frames, 640x480 at 5 fps (still,
    a 120 px and a 60 px person walking, exposure steps, a cloud, the IR switch, sensor
    noise). Each frame is made once and handed, in turn, to every detector; only the
    `detect` call is timed (time.perf_counter). Three passes; frames/s is the median
    pass (frames / summed detect time). Accuracy is the same every pass.

    Detectors:
      - project: edge.camera.motion.MotionDetector at motion_width 160 (default) and 133;
      - reference: a re-implementation written here of the idea of Frigate's
        ImprovedMotionDetector (its defaults: frame_height 100, threshold 30,
        contour_area 10, frame_alpha 0.01, lightning_threshold 0.8, improve_contrast),
        at 133x100 (its default) and 160x120. No third-party code: it is the baseline to
        time against. It is handed the grey frame, as Frigate takes the Y plane of the
        camera's YUV frames without a conversion; the project's detector is handed BGR.
        Its frames/s is the baseline; its accuracy here is that of this re-implementation
        on this noisy scene (its contrast stretch amplifies the noise: every still frame
        shows motion), not a claim about Frigate's own.

Run
    .venv/bin/python bench/motion.py            # ~1 min
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from edge.camera.motion import MotionDetector
from edge.config import CameraSection
from pingan_sim.motion_scene import Score, frames

Box = tuple[int, int, int, int]
Frame = np.ndarray[Any, Any]


class ReferenceMotion:
    """The published idea of Frigate's ImprovedMotionDetector, written from its
    description: nearest-neighbour resize of the grey frame, contrast stretched between
    the 4th and 96th percentiles averaged over the last 50 frames, a 3x3 Gaussian blur,
    difference against a float running average, threshold, one dilation, contours above
    `contour_area`; more than `lightning_threshold` of the frame in contours starts a
    re-calibration (fast averaging, no boxes) until motion is under 5% again. A difference
    that persists 10 frames is averaged in."""

    def __init__(self, width: int, height: int, frame_height: int = 100,
                 threshold: int = 30, contour_area: int = 10, frame_alpha: float = 0.01,
                 lightning_threshold: float = 0.8, history: int = 50) -> None:
        self.size = (frame_height * width // height, frame_height)
        self.ratio = width / self.size[0]
        self.threshold, self.contour_area = threshold, contour_area
        self.alpha, self.lightning = frame_alpha, lightning_threshold
        self.avg: np.ndarray[Any, np.dtype[np.float64]] | None = None
        self.contrast = np.zeros((history, 2), np.uint8)
        self.contrast[:, 1] = 255
        self.index = 0
        self.calibrating = True
        self.motion_frames = 0

    def detect(self, grey: Frame) -> list[Box]:
        small = cv2.resize(grey, self.size, interpolation=cv2.INTER_NEAREST)
        lo, hi = np.percentile(small, [4, 96]).astype(np.uint8)
        if lo < hi:
            self.contrast[self.index] = (lo, hi)
            self.index = (self.index + 1) % len(self.contrast)
            avg_lo, avg_hi = np.mean(self.contrast, axis=0)
            small = np.clip(small, avg_lo, avg_hi)
            small = ((small - avg_lo) / (avg_hi - avg_lo) * 255).astype(np.uint8)
        small = cv2.GaussianBlur(small, (3, 3), 1)
        if self.avg is None:
            self.avg = small.astype(np.float64)
        delta = cv2.absdiff(small, cv2.convertScaleAbs(self.avg))
        thresh = cv2.threshold(delta, self.threshold, 255, cv2.THRESH_BINARY)[1]
        thresh = cv2.dilate(thresh, None, iterations=1)  # type: ignore[call-overload]
        contours, _ = cv2.findContours(thresh, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes: list[Box] = []
        total = 0.0
        for contour in contours:
            area = cv2.contourArea(contour)
            total += area
            if area > self.contour_area:
                x, y, w, h = cv2.boundingRect(contour)
                r = self.ratio
                boxes.append((int(x * r), int(y * r), int((x + w) * r), int((y + h) * r)))
        pct = total / (self.size[0] * self.size[1])
        if self.calibrating and pct < 0.05 and len(boxes) < 4:
            self.calibrating = False
        if pct > self.lightning:
            self.calibrating = True
        alpha = 0.2 if self.calibrating else self.alpha
        if boxes:
            self.motion_frames += 1
            if self.motion_frames >= 10:
                cv2.accumulateWeighted(small, self.avg, alpha)
        else:
            cv2.accumulateWeighted(small, self.avg, alpha)
            self.motion_frames = 0
        return [] if self.calibrating else boxes


def project(width: int) -> Callable[[Frame, Frame], list[Box]]:
    motion = MotionDetector(CameraSection(motion_width=width), 640, 480)
    return lambda bgr, grey: motion.detect(bgr).boxes


def reference(frame_height: int) -> Callable[[Frame, Frame], list[Box]]:
    motion = ReferenceMotion(640, 480, frame_height=frame_height)
    return lambda bgr, grey: motion.detect(grey)


NAMES = {"project 160x120": lambda: project(160), "project 133x100": lambda: project(133),
         "reference 160x120": lambda: reference(120),
         "reference 133x100": lambda: reference(100)}


def one_pass() -> dict[str, tuple[float, Score]]:
    detectors = {name: make() for name, make in NAMES.items()}
    spent = dict.fromkeys(detectors, 0.0)
    scores = {name: Score() for name in detectors}
    count = 0
    for bgr, truth in frames():
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        count += 1
        for name, detect in detectors.items():
            started = time.perf_counter()
            boxes = detect(bgr, grey)
            spent[name] += time.perf_counter() - started
            scores[name].add(truth, boxes)
    return {name: (count / spent[name], scores[name]) for name in detectors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(f"python {platform.python_version()}, OpenCV {cv2.__version__}, numpy "
          f"{np.__version__}, {os.cpu_count()} CPUs, {platform.machine()}; one thread; "
          f"load {os.getloadavg()[0]:.2f}")
    runs = [one_pass() for _ in range(args.passes)]
    fps = {name: statistics.median(run[name][0] for run in runs) for name in NAMES}
    for name in NAMES:
        print(f"{name:18s} {fps[name]:7.0f} frames/s  {runs[0][name][1].line()}")
    for size in ("160x120", "133x100"):
        print(f"at {size}: project / reference = "
              f"{fps['project ' + size] / fps['reference ' + size]:.2f}x")
    print(f"project default / reference default = "
          f"{fps['project 160x120'] / fps['reference 133x100']:.2f}x "
          f"(median of {args.passes} passes)")


if __name__ == "__main__":
    main()
