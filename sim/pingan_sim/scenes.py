"""Real photographs (bundled with scikit-image) made into camera frames: the simulated
station's replayed scene, the tests' and the benches' sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

W, H = 640, 480


def photo(name: str) -> np.ndarray[Any, Any]:
    """A scikit-image photo as an OpenCV BGR frame."""
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR))


def empty_scene() -> np.ndarray[Any, Any]:
    """A 640x480 outdoor scene with nobody in it (the `rocket` photo)."""
    return np.asarray(cv2.resize(photo("rocket"), (W, H), interpolation=cv2.INTER_AREA))


def with_person(scene: np.ndarray[Any, Any], x: int, y: int, size: int = 120
                ) -> np.ndarray[Any, Any]:
    """`scene` with the `camera` photo (a man with a camera) pasted, size x size pixels,
    top left at (x, y): a person under a third of the frame height, missed on the full
    frame."""
    frame = scene.copy()
    frame[y:y + size, x:x + size] = cv2.resize(photo("camera"), (size, size),
                                               interpolation=cv2.INTER_AREA)
    return frame


def write_sequence(folder: Path, frames: list[np.ndarray[Any, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)
    return folder


def incident(scene: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    """Empty, then a person walking in small steps for a while, then empty again."""
    walking = [with_person(scene, 400 + 4 * i, 240) for i in range(8)]
    return [scene] * 4 + walking + [scene] * 4
