"""Regenerate sim/camera/: the simulator's replayed camera scene.

Photographs bundled with scikit-image: the public-domain `rocket` launch site as the
empty scene, the CC0 `camera` photo (a man with a camera) pasted small (120 px) walking in
from the right, so the default detector only finds him through the motion crop.
Run from the repository root with the test environment:
    .venv/bin/python sim/make_camera_scene.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from camera_scenes import empty_scene, incident

OUT = Path(__file__).resolve().parent / "camera"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.jpg"):
        old.unlink()
    for i, frame in enumerate(incident(empty_scene())):
        cv2.imwrite(str(OUT / f"{i:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 80])


if __name__ == "__main__":
    main()
