"""Colorize model files, where they come from, and how they are loaded (no image handling here).

* ``eccv16`` (default): ``colorization_release_v2-9b330a0b.pth``, "Colorful Image Colorization" (ECCV 2016)
* ``siggraph17``: ``siggraph17-df00044c.pth``, "Real-Time User-Guided Image Colorization" (SIGGRAPH 2017)

Both are the authors' PyTorch releases (BSD-2-Clause, richzhang/colorization), downloaded from the
authors' bucket; the 8 hex digits in each name are the start of the file's SHA-256 (torch.hub
convention) and are checked before the file enters the model cache. No registry package carries them, so
without internet access they are unavailable and the stage answers 503 naming the fetch command.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.model_store import LoadedModels, ModelFile, ModelStore
from shared.torch_weights import load_strict, read_state_dict, select_torch_device
from shared.settings import cached_settings
from .settings import ColorizeSettings

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


BF16_ENV = "COLORIZE_CPU_BF16"


@dataclass
class NetworkRunner:
    """A shared, read-only network: L (h x w float32, [0, 100]) -> ab (2 x h' x w' float32).

    CPU: float32 in channels-last layout (same results, 1.1-1.3x faster here); bfloat16 autocast only when
    ``bf16`` (env COLORIZE_CPU_BF16=1: about 3x faster, but unchecked against fp32 with the real weights).
    CUDA: float16 autocast.
    """

    net: object
    device: str
    bf16: bool = False

    def __post_init__(self):
        import torch
        if self.device == "cpu":
            self.net = self.net.to(memory_format=torch.channels_last)

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(lightness, dtype=np.float32))[None, None]
        with torch.inference_mode():
            tensor = tensor.to(self.device)
            if self.device == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self.net(tensor)
            else:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    out = self.net(tensor)
        return np.ascontiguousarray(out[0].float().cpu().numpy())


class ColorizeModels(LoadedModels):
    """The colorize networks, each loaded once on first use and shared read-only between requests."""

    def __init__(self, store: ModelStore | None = None):
        super().__init__(MODEL_FILES, self._load_runner, stage=STAGE, store=store)

    def status(self) -> dict[str, dict]:  # type: ignore[override]
        return super().status(DEFAULT_MODEL)

    def get(self, name: str | None = None) -> NetworkRunner:
        return self.load(name or DEFAULT_MODEL)

    @staticmethod
    def _load_runner(name: str, path: Path) -> NetworkRunner:
        net = load_network(name, path)
        device = select_torch_device()
        configured = cached_settings(ColorizeSettings)
        if configured.colorize_threads:
            import torch
            torch.set_num_threads(configured.colorize_threads)
        return NetworkRunner(net.to(device), device, bf16=configured.colorize_cpu_bf16)
