"""Regenerate the simulated station's replayed camera scene (pingan_sim/camera/).

Photographs bundled with scikit-image: the public-domain `rocket` launch site as the
empty scene, the CC0 `camera` photo (a man with a camera) pasted small (120 px) walking in
from the right, so the default detector only finds him through the motion crop.
Run with the test environment:
    .venv/bin/python -m pingan_sim.make_camera_scene
"""

from __future__ import annotations

import cv2

from pingan_sim import SCENE
from pingan_sim.scenes import empty_scene, incident


def main() -> None:
    SCENE.mkdir(exist_ok=True)
    for old in SCENE.glob("*.jpg"):
        old.unlink()
    for i, frame in enumerate(incident(empty_scene())):
        cv2.imwrite(str(SCENE / f"{i:04d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 80])


if __name__ == "__main__":
    main()
