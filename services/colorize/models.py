"""Colorize model files, where they come from, and how they are loaded (no image handling here).

* ``eccv16`` (default): ``colorization_release_v2-9b330a0b.pth``, "Colorful Image Colorization" (ECCV 2016)
* ``siggraph17``: ``siggraph17-df00044c.pth``, "Real-Time User-Guided Image Colorization" (SIGGRAPH 2017)

Both are the authors' PyTorch releases (BSD-2-Clause, richzhang/colorization), downloaded from the
authors' bucket; the 8 hex digits in each name are the start of the file's SHA-256 (torch.hub
convention) and are checked before the file enters the model cache. No registry package carries them, so
without internet access they are unavailable and the stage answers 503 naming the fetch command.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.model_layer import LoadedModel, ModelRegistry, ModelSpec, SizeRequirements
from shared.model_store import ModelFile, ModelStore
from shared.torch_weights import load_strict, read_state_dict

STAGE = "colorize"
FETCH = "python -m services.colorize.fetch"
ECCV16, SIGGRAPH17 = "eccv16", "siggraph17"
DEFAULT_MODEL = ECCV16
BASE_URL = "https://colorizers.s3.us-east-2.amazonaws.com/"

MODEL_FILES: dict[str, ModelFile] = {
    ECCV16: ModelFile(
        name=ECCV16, filename="colorization_release_v2-9b330a0b.pth", fetch_command=f"{FETCH} {ECCV16}",
        url=BASE_URL + "colorization_release_v2-9b330a0b.pth", sha256="9b330a0b",
        license="BSD-2-Clause (richzhang/colorization)",
        description="Zhang et al., Colorful Image Colorization (ECCV 2016), 32.2 M params"),
    SIGGRAPH17: ModelFile(
        name=SIGGRAPH17, filename="siggraph17-df00044c.pth", fetch_command=f"{FETCH} {SIGGRAPH17}",
        url=BASE_URL + "siggraph17-df00044c.pth", sha256="df00044c",
        license="BSD-2-Clause (richzhang/colorization)",
        description="Zhang et al., Real-Time User-Guided Image Colorization (SIGGRAPH 2017), automatic "
                    "mode, 34.2 M params"),
}


def build_network(name: str):
    if name == ECCV16:
        from .arch.eccv16 import ECCV16 as Net
    elif name == SIGGRAPH17:
        from .arch.siggraph17 import SIGGRAPH17 as Net
    else:
        raise KeyError(name)
    return Net()


def load_network(name: str, path: Path):
    """The network with the checkpoint's weights (``weights_only=True``; every key and shape must match)."""
    return load_strict(build_network(name), read_state_dict(path))


def _torch_model(spec: ModelSpec, net, device: str, precision: str) -> LoadedModel:
    from shared.torch_model import TorchModel

    # L in [0, 100] in, ab out (no range mapping, no clamp); channels-last on CPU: same results, 1.1-1.3x faster
    return TorchModel(spec, net, device, precision, value_range=None, channels_last=device == "cpu")


def _load(spec: ModelSpec, paths: tuple[Path, ...], device: str, precision: str) -> LoadedModel:
    return _torch_model(spec, load_network(spec.name, paths[0]), device, precision)


# CPU runs fp32 unless COLORIZE_PRECISION=bf16 (about 3x faster, unchecked against fp32 with the real weights)
SPECS = tuple(ModelSpec(name=name, description=f.description, license=f.license, files=(f,), load=_load,
                        fetch_command=f.fetch_command, size=SizeRequirements(multiple_of=8),
                        precisions=("fp32", "bf16", "fp16"), output_range=None)
              for name, f in MODEL_FILES.items())


class LightnessToAB:
    """The colorize network as the stage uses it: L (h x w float32, [0, 100]) -> ab (2 x h x w float32)."""

    def __init__(self, model: LoadedModel, ctx=None):
        self.model, self.ctx = model, ctx

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.model(lightness, self.ctx).transpose(2, 0, 1))


def lightness_network(name: str, net, device: str = "cpu", precision: str = "fp32") -> LightnessToAB:
    """A bare network (e.g. random weights in a benchmark) wrapped as the stage runs it."""
    spec = next(s for s in SPECS if s.name == name)
    return LightnessToAB(_torch_model(spec, net, device, precision))


class ColorizeModels(ModelRegistry):
    """The colorize networks, each loaded once on first use and shared read-only between requests."""

    def __init__(self, store: ModelStore | None = None):
        super().__init__(STAGE, SPECS, store=store, preference=(DEFAULT_MODEL, SIGGRAPH17))

    def get(self, name: str | None = None, ctx=None) -> LightnessToAB:
        return LightnessToAB(self.pick(name)[1], ctx)
