"""Accept the person model by what it is and what it does, never by its bytes.

The conversion runs in floating point, whose last bits differ between CPUs, so the built
`.tflite` differs in bytes from one machine to another. A model is accepted when:

- its structure equals the recorded one (`person_ssdlite.expected.json`): the operators in
  execution order, and the name, shape and type of each input and output tensor;
- on scikit-image's bundled photographs, run through the station's own detector
  (edge.camera.detector), its person detections (score, box) equal the recorded ones
  within the recorded tolerance, and the photographs without a person stay negative.

Run by models/build.sh (on a present model: do nothing if it passes; on a built one:
refuse it if it fails) and by tests/test_model_acceptance.py. Needs the project's .venv
(ai-edge-litert, scikit-image from the test extras), not TensorFlow.

    python models/accept.py MODEL            # exit 0 accepted, 1 refused (says what differed)
    python models/accept.py --record MODEL   # rewrite the expected JSON from MODEL
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import skimage.data
from ai_edge_litert import schema_py_generated as schema

from edge.camera.detector import DetectorError, PersonDetector, make_interpreter

EXPECTED = Path(__file__).resolve().with_name("person_ssdlite.expected.json")
PEOPLE = ("astronaut", "camera")
NO_PEOPLE = ("chelsea", "coffee", "rocket")
# Stated tolerance. Float noise far above what differs between CPUs moves scores and boxes
# by ~3e-5; a real change of the weights or the post-processing by far more (README.md).
TOLERANCE = {"score": 0.02, "box": 0.02}
# Detections scoring under this are not compared (the station's threshold is 0.5).
FLOOR = 0.1
# A photograph without a person must keep every person score under this.
NEGATIVE_MAX = 0.1

Structure = dict[str, Any]
Found = list[list[float]]  # [score, ymin, xmin, ymax, xmax] per detection, best first


class ModelRefused(Exception):
    """The model differs from the recorded one; the message says what differed."""


def structure(model: Path) -> Structure:
    """Operators in execution order (from the flatbuffer) and the input and output tensors
    (from the interpreter, after allocation: the post-processing outputs have no static
    shape in the file)."""
    try:
        interpreter = make_interpreter(model, 1)
    except DetectorError as exc:
        raise ModelRefused(f"{model} refused: {exc}") from exc
    tfl = schema.Model.GetRootAs(model.read_bytes(), 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(tfl.OperatorCodesLength()):
        code = tfl.OperatorCodes(i)
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode() if custom else builtin.get(number, f"builtin {number}"))
    operators = [codes[tfl.Subgraphs(s).Operators(i).OpcodeIndex()]
                 for s in range(tfl.SubgraphsLength())
                 for i in range(tfl.Subgraphs(s).OperatorsLength())]

    def tensors(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": d["name"], "shape": [int(n) for n in d["shape"]],
                 "type": np.dtype(d["dtype"]).name} for d in details]

    return {"operators": operators, "inputs": tensors(interpreter.get_input_details()),
            "outputs": tensors(interpreter.get_output_details())}


def photograph(name: str) -> np.ndarray[Any, Any]:
    """A scikit-image bundled photograph as RGB uint8."""
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def detections(model: Path) -> dict[str, Found]:
    """Person detections scoring at least FLOOR on each reference photograph (for the
    negatives: the best one, whatever its score), via the station's own detector."""
    try:
        detector = PersonDetector(model, None)
    except DetectorError as exc:
        raise ModelRefused(f"{model} refused: {exc}") from exc
    out = {}
    for name in PEOPLE + NO_PEOPLE:
        found = detector.run(photograph(name))
        keep = found[:1] if name in NO_PEOPLE else [d for d in found if d[0] >= FLOOR]
        out[name] = [[round(s, 5)] + [round(v, 5) for v in box] for s, box in keep]
    return out


def record(model: Path) -> dict[str, Any]:
    return {"tolerance": TOLERANCE, "floor": FLOOR, "negative_max": NEGATIVE_MAX,
            "structure": structure(model), "detections": detections(model)}


def _close(a: list[float], b: list[float], tol: dict[str, float]) -> bool:
    return (abs(a[0] - b[0]) <= tol["score"]
            and max(abs(x - y) for x, y in zip(a[1:], b[1:], strict=True)) <= tol["box"])


def _show(d: list[float]) -> str:
    return f"{d[0]:.3f} at ({', '.join(f'{v:.3f}' for v in d[1:])})"


def structure_differences(want: Structure, got: Structure) -> list[str]:
    diffs = []
    for key in ("inputs", "outputs"):
        w, g = want.get(key, []), got.get(key, [])
        if w != g:
            diffs.append(f"{key}: expected {_tensors(w)}, got {_tensors(g)}")
    w_ops, g_ops = want.get("operators", []), got.get("operators", [])
    if w_ops != g_ops:
        at = next((i for i, (a, b) in enumerate(zip(w_ops, g_ops, strict=False)) if a != b),
                  min(len(w_ops), len(g_ops)))
        diffs.append(f"operators: expected {len(w_ops)}, got {len(g_ops)}; first difference "
                     f"at #{at}: expected {w_ops[at] if at < len(w_ops) else 'none'}, "
                     f"got {g_ops[at] if at < len(g_ops) else 'none'}")
    return diffs


def _tensors(tensors: list[dict[str, Any]]) -> str:
    return "[" + ", ".join(f"{t['name']} {t['shape']} {t['type']}" for t in tensors) + "]"


def detection_differences(want: dict[str, Any], got: dict[str, Found]) -> list[str]:
    tol, floor, negative_max = want["tolerance"], want["floor"], want["negative_max"]
    diffs = []
    for name, expected in want["detections"].items():
        actual = got.get(name, [])
        if name in NO_PEOPLE:
            if actual and actual[0][0] >= negative_max:
                diffs.append(f"{name} (no person): person {_show(actual[0])}, "
                             f"expected every score < {negative_max}")
            continue
        unused = list(actual)
        for e in expected:
            match = next((a for a in unused if _close(e, a, tol)), None)
            if match is not None:
                unused.remove(match)
            elif e[0] >= floor + tol["score"]:
                near = min(unused, key=lambda a: abs(a[0] - e[0]), default=None)
                if near is not None:
                    unused.remove(near)
                diffs.append(f"{name}: expected person {_show(e)}, got "
                             f"{_show(near) if near else 'no detection'}")
        for a in unused:
            if a[0] >= floor + tol["score"] and not any(_close(e, a, tol) for e in expected):
                diffs.append(f"{name}: unexpected person {_show(a)}")
    return diffs


def check(model: Path, expected: dict[str, Any] | None = None) -> None:
    """Raise ModelRefused, saying everything that differed, unless `model` is accepted."""
    want = expected if expected is not None else json.loads(EXPECTED.read_text())
    diffs = structure_differences(want["structure"], structure(model))
    if not diffs:
        tol = want["tolerance"]
        diffs = detection_differences(want, detections(model))
        if diffs:
            diffs.append(f"(tolerance: score ±{tol['score']}, box ±{tol['box']})")
    if diffs:
        raise ModelRefused(f"{model} refused, it differs from {EXPECTED.name}:\n  "
                           + "\n  ".join(diffs))


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--record":
        EXPECTED.write_text(json.dumps(record(Path(argv[1])), indent=1) + "\n")
        print(f"wrote {EXPECTED}")
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        check(Path(argv[0]))
    except ModelRefused as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
