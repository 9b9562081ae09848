"""The camera: motion-gated person detection (sources → motion → detector → pipeline)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.camera.detector import BUNDLED_MODEL, DetectorError, PersonDetector
from edge.camera.pipeline import CameraPipeline, Sighting
from edge.camera.sources import make_source
from edge.config import CameraSection
from edge.health import Health

__all__ = ["CameraPipeline", "DetectorError", "Sighting", "build", "make_detector"]


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
