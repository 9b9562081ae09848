"""Person detection with a TFLite SSD model, on crops around motion.

Runtime seam: `ai_edge_litert` first, `tflite_runtime` second (same Interpreter API).
Models: the standard TFLite SSD post-processed outputs (TFLite_Detection_PostProcess:
boxes [1,N,4] as ymin,xmin,ymax,xmax normalised; classes [1,N]; scores [1,N]; count [1]),
as in the COCO `detect.tflite` and EfficientDet-Lite models; float32 input in [-1, 1] or
uint8 input in [0, 255]. A labels file names the classes (one per line, line i = class i,
or "i name" lines), so a technician can provision another model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge import resources
from edge.camera.motion import Box
from edge.camera.sources import Frame

# The default model: see edge.resources for where it is looked up.
BUNDLED_MODEL = resources.model_path()
RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
# Crops smaller than this (pixels, square side) are not informative; grow them.
MIN_CROP = 96


class DetectorError(RuntimeError):
    """The model or the TFLite runtime cannot be loaded."""


@dataclass(frozen=True)
class Detection:
    score: float
    box: Box  # full-frame pixels


def make_interpreter(model: Path, threads: int) -> Any:
    """Build an Interpreter from the first runtime that is installed and works."""
    if not model.is_file():
        hint = (resources.missing_hint(resources.MODEL) if model == BUNDLED_MODEL
                else "check camera.model")
        raise DetectorError(f"model {model} not found ({hint}; models/build.sh builds it)")
    errors = []
    for name in RUNTIMES:
        try:
            module = importlib.import_module(name)
            interpreter = module.Interpreter(model_path=str(model), num_threads=threads)
            interpreter.allocate_tensors()
            return interpreter
        except ImportError as exc:
            errors.append(f"{name}: not installed ({exc})")
        except (RuntimeError, ValueError) as exc:
            errors.append(f"{name}: {exc}")
    raise DetectorError(f"no TFLite runtime could load {model}: " + "; ".join(errors))


def read_labels(path: Path | None) -> dict[int, str]:
    if path is None:
        return {0: "person"}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DetectorError(f"cannot read labels {path}: {exc.strerror}") from exc
    labels = {}
    for i, line in enumerate(lines):
        head, _, rest = line.strip().partition(" ")
        if head.isdigit() and rest.strip():
            labels[int(head)] = rest.strip()
        elif line.strip():
            labels[i] = line.strip()
    return labels


class PersonDetector:
    def __init__(self, model: Path, labels: Path | None, label: str = "person",
                 threads: int = 1, score_threshold: float = 0.5,
                 crop_margin: float = 1.6) -> None:
        self.model = model
        self._interpreter = make_interpreter(model, threads)
        names = read_labels(labels)
        wanted = [i for i, name in names.items() if name == label]
        if not wanted:
            raise DetectorError(f"label {label!r} is not in the labels file {labels}")
        self._class = wanted[0]
        self.score_threshold = score_threshold
        self.crop_margin = crop_margin
        inp = self._interpreter.get_input_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or inp[0]["shape"][3] != 3:
            raise DetectorError(f"{model}: expected one [1,H,W,3] input, got "
                                f"{[list(d['shape']) for d in inp]}")
        self._input = inp[0]["index"]
        self._size = (int(inp[0]["shape"][2]), int(inp[0]["shape"][1]))
        self._float = inp[0]["dtype"] == np.float32
        self._outputs = _ssd_outputs(self._interpreter.get_output_details(), model)

    def run(self, rgb: np.ndarray[Any, Any]) -> list[tuple[float, tuple[float, ...]]]:
        """All detections of the wanted class on one RGB image, as (score, normalised
        ymin, xmin, ymax, xmax), best first."""
        resized = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        tensor = (resized.astype(np.float32) / 127.5 - 1.0) if self._float else resized
        self._interpreter.set_tensor(self._input, tensor[np.newaxis])
        self._interpreter.invoke()
        boxes, classes, scores, count = (self._interpreter.get_tensor(i) for i in self._outputs)
        n = min(int(count.reshape(-1)[0]), scores.shape[-1])
        found = [(float(scores[0, i]), tuple(float(v) for v in boxes[0, i]))
                 for i in range(n) if int(classes[0, i]) == self._class]
        return sorted(found, key=lambda d: d[0], reverse=True)

    def detect(self, frame: Frame, region: Box) -> list[Detection]:
        """People in a square crop around `region` (grown by crop_margin), over threshold."""
        x0, y0, x1, y1 = crop_box(region, frame.shape[1], frame.shape[0], self.crop_margin)
        crop = cv2.cvtColor(frame[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
        cw, ch = x1 - x0, y1 - y0
        out = []
        for score, (ymin, xmin, ymax, xmax) in self.run(crop):
            if score < self.score_threshold:
                break
            out.append(Detection(score, (x0 + round(xmin * cw), y0 + round(ymin * ch),
                                         x0 + round(xmax * cw), y0 + round(ymax * ch))))
        return out


def crop_box(region: Box, width: int, height: int, margin: float) -> Box:
    """A square around `region`, `margin` times its longer side, moved to fit the frame."""
    rx0, ry0, rx1, ry1 = region
    side = int(max(rx1 - rx0, ry1 - ry0) * margin)
    side = min(max(side, MIN_CROP), width, height)
    cx, cy = (rx0 + rx1) // 2, (ry0 + ry1) // 2
    x0 = min(max(cx - side // 2, 0), width - side)
    y0 = min(max(cy - side // 2, 0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def _ssd_outputs(details: list[dict[str, Any]], model: Path) -> list[int]:
    """Output indices in the order boxes, classes, scores, count."""
    if len(details) != 4:
        raise DetectorError(f"{model}: expected the 4 SSD post-processed outputs "
                            f"(boxes, classes, scores, count), got {len(details)}")
    by_name = {d["name"]: d["index"] for d in details}
    names = ["TFLite_Detection_PostProcess"] + [f"TFLite_Detection_PostProcess:{i}"
                                                 for i in (1, 2, 3)]
    if all(n in by_name for n in names):
        return [by_name[n] for n in names]
    # Other exporters (EfficientDet-Lite): boxes are the 3-D output, count the 1-element
    # one; classes and scores come in that order among the rest.
    boxes = [d for d in details if len(d["shape"]) == 3]
    count = [d for d in details if int(np.prod(d["shape"])) == 1]
    rest = [d for d in details if d not in boxes and d not in count]
    if len(boxes) != 1 or len(count) != 1 or len(rest) != 2:
        raise DetectorError(f"{model}: outputs are not the SSD post-processed kind")
    return [boxes[0]["index"], rest[0]["index"], rest[1]["index"], count[0]["index"]]
