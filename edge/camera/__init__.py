"""The camera: motion-gated person detection (sources → motion → detector → pipeline);
`attach` builds it for a station."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.camera.detector import BUNDLED_MODEL, DetectorError, PersonDetector
from edge.camera.pipeline import CameraPipeline, Sighting
from edge.camera.sources import make_source
from edge.config import CameraSection
from edge.contract import commands
from edge.contract.events import CameraPerson, CameraPersonPayload, text
from edge.health import Health
from edge.link.dispatch import Handlers
from edge.store.recorder import Recorder

__all__ = ["CameraPipeline", "DetectorError", "Sighting", "attach", "build", "make_detector"]


def make_detector(cfg: CameraSection) -> PersonDetector:
    """The detector as configured; raises DetectorError when the model cannot load."""
    model = Path(cfg.model).expanduser() if cfg.model else BUNDLED_MODEL
    labels = Path(cfg.labels).expanduser() if cfg.labels else model.with_suffix(".labels")
    detector = PersonDetector(model, labels if labels.is_file() or cfg.labels else None,
                              label=cfg.label, threads=cfg.threads,
                              score_threshold=cfg.score_threshold, crop_margin=cfg.crop_margin)
    return detector


def build(cfg: CameraSection, health: Health,
          on_person: Callable[[Sighting], None]) -> CameraPipeline:
    """The camera stage as configured; raises DetectorError when the model cannot load."""
    return CameraPipeline(cfg, make_source(cfg), make_detector(cfg), health, on_person)


def attach(cfg: CameraSection, health: Health, recorder: Recorder, handlers: Handlers
           ) -> CameraPipeline | None:
    """The station's camera, its commands registered; None, and its commands refused, when
    it is off or its detector cannot load (the rest of the unit works without it, and the
    township sees why)."""
    pipeline = None
    if cfg.enabled:
        def seen(sighting: Sighting) -> None:
            recorder.record(CameraPerson(payload=CameraPersonPayload(
                score=sighting.score, box=sighting.box, zone=sighting.zone,
                snapshot_jpeg=sighting.snapshot_b64()), **recorder.identity()))

        try:
            pipeline = build(cfg, health, seen)
        except DetectorError as exc:
            health.set("camera_detector", f"摄像头人形检测无法启动：{exc}",
                       f"camera person detector cannot start: {exc}",
                       action="run models/build.sh or fix camera.model")
    if pipeline is None:
        handlers.register((commands.CameraArm, commands.CameraDisarm), _no_camera)
    else:
        pipeline.register(handlers)
    return pipeline


def _no_camera(cmd: commands.Command) -> dict[str, Any]:
    raise commands.rejected(cmd, "invalid_command", text(
        "本站摄像头未启用", "the camera is not enabled at this station"))
