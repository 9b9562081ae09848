"""The person model is accepted by what it is and does (models/accept.py), not its bytes.

Variants are made from the real model's bytes with the TFLite flatbuffer schema that
ai-edge-litert ships (no TensorFlow): weights changed in place, post-processing cut off.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from edge.camera.detector import BUNDLED_MODEL

ROOT = Path(__file__).resolve().parents[1]


def _load_accept() -> ModuleType:
    spec = importlib.util.spec_from_file_location("accept", ROOT / "models" / "accept.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accept = _load_accept()


def float_weights(data: bytearray) -> list[np.ndarray[Any, Any]]:
    """Writable float32 views, into `data`, of every constant float tensor over 1,000
    values (the convolution weights), located through the flatbuffer."""
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    views = []
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        buffer = model.Buffers(tensor.Buffer())
        if tensor.Type() != schema.TensorType.FLOAT32 or buffer.DataLength() < 4000:
            continue
        raw = buffer.DataAsNumpy()
        assert raw.base is not None  # a view into `data`, not a copy
        views.append(raw.view(np.float32))
    return views


def perturbed(relative: float, seed: int = 8) -> bytes:
    """The real model with every weight multiplied by (1 + relative * N(0, 1))."""
    data = bytearray(BUNDLED_MODEL.read_bytes())
    rng = np.random.default_rng(seed)
    weights = float_weights(data)
    assert len(weights) > 50
    for w in weights:
        w *= (1 + relative * rng.standard_normal(w.shape)).astype(np.float32)
    return bytes(data)


def without_post_processing() -> bytes:
    """The real model with TFLite_Detection_PostProcess removed: its outputs are the raw
    box encodings and class scores, as if the conversion had stopped before it."""
    model = schema.ModelT.InitFromPackedBuf(BUNDLED_MODEL.read_bytes(), 0)
    graph = model.subgraphs[0]
    post = [op for op in graph.operators
            if model.operatorCodes[op.opcodeIndex].customCode in
            (b"TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess")]
    assert len(post) == 1
    graph.operators.remove(post[0])
    graph.outputs = list(post[0].inputs[:2])
    builder = flatbuffers.Builder(BUNDLED_MODEL.stat().st_size + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def refusal(path: Path) -> str:
    with pytest.raises(accept.ModelRefused) as info:
        accept.check(path)
    return str(info.value)


def test_the_real_model_is_accepted() -> None:
    accept.check(BUNDLED_MODEL)


def test_float_noise_like_another_cpus_is_accepted(tmp_path: Path) -> None:
    # Another CPU changes the last bits of constants (~1e-7 relative); far inside tolerance.
    model = tmp_path / "noise.tflite"
    model.write_bytes(perturbed(1e-5))
    assert model.read_bytes() != BUNDLED_MODEL.read_bytes()
    accept.check(model)


def test_weights_perturbed_beyond_tolerance_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "perturbed.tflite"
    model.write_bytes(perturbed(0.2))
    message = refusal(model)
    # The structure is the same; what it does is not.
    assert "operators" not in message and "outputs" not in message
    assert "astronaut" in message or "camera" in message, message
    assert "tolerance: score ±0.02, box ±0.02" in message


def test_post_processing_cut_off_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "cut.tflite"
    model.write_bytes(without_post_processing())
    message = refusal(model)
    assert "operators: expected 115, got 114" in message, message
    assert "expected TFLite_Detection_PostProcess, got none" in message
    assert "outputs: expected [TFLite_Detection_PostProcess [1, 10, 4] float32" in message
    assert "raw_outputs/box_encodings" in message


def test_a_file_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "garbage.tflite"
    model.write_bytes(BUNDLED_MODEL.read_bytes()[:4096])
    assert "could load" in refusal(model)


def test_negatives_must_stay_negative(tmp_path: Path) -> None:
    # The real model, judged against a record where chelsea had scored 0.5 and the
    # negative limit were lower than what the real model gives it.
    want = accept.record(BUNDLED_MODEL)
    want["negative_max"] = want["detections"]["chelsea"][0][0] / 2
    with pytest.raises(accept.ModelRefused, match=r"chelsea \(no person\): person 0\.0"):
        accept.check(BUNDLED_MODEL, want)


def test_build_does_nothing_when_the_present_model_passes() -> None:
    before = BUNDLED_MODEL.stat().st_mtime_ns
    done = subprocess.run([str(ROOT / "models" / "build.sh")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "models/person_ssdlite.tflite: accepted", done.stdout
    assert BUNDLED_MODEL.stat().st_mtime_ns == before
