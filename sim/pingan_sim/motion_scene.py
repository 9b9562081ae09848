"""The motion ground-truth scene: 858 frames, 640x480 at 5 fps, with per-frame truth.

Built from the project's own scene (`scenes`: the empty `rocket` site, the `camera`
photo pasted as a person) plus sensor noise. In order:
    warm-up 20 (not scored), still 110, a 120 px person walking right 95, settle 25
    (not scored: the person has just gone), a 60 px person walking left 95, settle 25,
    then five light changes, each scored from the change for its frames then left to
    settle (not scored): exposure x1.3 (40 + 56), exposure x0.75 (40 + 56), a cloud
    ramping to x0.6 over 40 frames held 20 (+ 56), the IR switch to grey x0.8 + 30
    (40 + 56) and back to colour (28 + 56).
Frames are made one at a time (858 frames would be 790 MB held together).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pingan_sim.scenes import W, empty_scene, photo

Frame = np.ndarray[Any, Any]
Box = tuple[int, int, int, int]

FRAMES = 858
NOISE_SIGMA = 3.0


@dataclass(frozen=True)
class Truth:
    kind: str  # "warmup", "still", "moving", "settle" or "light"
    person: Box | None = None  # x0, y0, x1, y1 (exclusive) where the person is now
    before: Box | None = None  # ... and was in the previous frame
    light: str = ""  # which light change ("exposure_up", ..., "ir_on", "ir_off")


def _exposure(scene: Frame, gain: float) -> Frame:
    return np.asarray(cv2.convertScaleAbs(scene, alpha=gain))


def _ir(scene: Frame) -> Frame:
    grey = cv2.convertScaleAbs(cv2.cvtColor(scene, cv2.COLOR_BGR2GRAY), alpha=0.8, beta=30)
    return np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))


def _plan(scene: Frame) -> Iterator[tuple[Frame, Truth]]:
    people = {size: np.asarray(cv2.resize(photo("camera"), (size, size),
                                          interpolation=cv2.INTER_AREA))
              for size in (120, 60)}

    def walk(size: int, xs: list[int], y: int) -> Iterator[tuple[Frame, Truth]]:
        before: Box | None = None
        for x in xs:
            frame = scene.copy()
            frame[y:y + size, x:x + size] = people[size]
            box = (x, y, x + size, y + size)
            yield frame, Truth("moving", box, before)
            before = box

    for _ in range(20):
        yield scene, Truth("warmup")
    for _ in range(110):
        yield scene, Truth("still")
    yield from walk(120, [10 + 5 * i for i in range(95)], 240)
    for _ in range(25):
        yield scene, Truth("settle")
    yield from walk(60, [W - 70 - 5 * i for i in range(95)], 300)
    for _ in range(25):
        yield scene, Truth("settle")
    for name, gain in (("exposure_up", 1.3), ("exposure_down", 0.75)):
        lit = _exposure(scene, gain)
        for i in range(96):
            yield lit, Truth("light" if i < 40 else "settle", light=name)
    for i in range(116):
        gain = 1.0 - 0.4 * min(1.0, (i + 1) / 40)
        yield _exposure(scene, gain), Truth("light" if i < 60 else "settle", light="cloud")
    night = _ir(scene)
    for i in range(96):
        yield night, Truth("light" if i < 40 else "settle", light="ir_on")
    for i in range(84):
        yield scene, Truth("light" if i < 28 else "settle", light="ir_off")


def frames(seed: int = 13) -> Iterator[tuple[Frame, Truth]]:
    """(noisy 640x480 BGR frame, truth) for each of the 858 frames, the same every run."""
    rng = np.random.default_rng(seed)
    noise = np.empty((480, 640, 3), np.int16)
    out = np.empty((480, 640, 3), np.int16)
    count = 0
    for clean, truth in _plan(empty_scene()):
        noise[...] = rng.normal(0.0, NOISE_SIGMA, noise.shape)
        np.add(clean, noise, out=out)
        yield np.clip(out, 0, 255).astype(np.uint8), truth
        count += 1
    assert count == FRAMES, count


def overlaps(a: Box, b: Box, slack: int = 0) -> bool:
    return (a[0] < b[2] + slack and b[0] < a[2] + slack
            and a[1] < b[3] + slack and b[1] < a[3] + slack)


@dataclass
class Score:
    """Accuracy of one motion detector over the scene."""

    moving: int = 0
    caught: int = 0  # moving frames with a box on the person
    astray: int = 0  # moving frames with a box away from the person (and where they were)
    still: int = 0
    still_fp: int = 0
    light: int = 0
    light_fp: int = 0
    ir_fp: int = 0  # of light_fp, on the IR switch (on or off)
    settle_fp: int = 0  # not scored; shown for information

    def add(self, truth: Truth, boxes: list[Box]) -> None:
        if truth.kind == "moving":
            assert truth.person is not None
            self.moving += 1
            near = [truth.person] + ([truth.before] if truth.before else [])
            self.caught += any(overlaps(b, truth.person) for b in boxes)
            self.astray += any(not any(overlaps(b, p, 8) for p in near) for b in boxes)
        elif truth.kind == "still":
            self.still += 1
            self.still_fp += bool(boxes)
        elif truth.kind == "light":
            self.light += 1
            self.light_fp += bool(boxes)
            self.ir_fp += bool(boxes) and truth.light.startswith("ir_")
        elif truth.kind == "settle":
            self.settle_fp += bool(boxes)

    def line(self) -> str:
        return (f"moving caught {self.caught}/{self.moving}, boxes astray {self.astray}, "
                f"false positives: still {self.still_fp}/{self.still}, light "
                f"{self.light_fp}/{self.light} (IR switch {self.ir_fp}), "
                f"settling {self.settle_fp}")
