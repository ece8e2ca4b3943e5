"""A PyTorch network as a ``LoadedModel``: placed on its device at its precision once, run under
inference mode, and abortable between layers (imports torch, so only the model stages import this).

Abort: a forward pre-hook on every leaf module asks the running request's context ``check_aborted()``, so a
request whose client went away stops within one layer, not at the end of a tile that may take many seconds.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
from torch import nn

from .model_layer import LoadedModel, ModelSpec

_running = threading.local()  # the context of the request this thread is running a network for


def _check_abort_hook(_module: nn.Module, _args) -> None:
    ctx = getattr(_running, "ctx", None)
    if ctx is not None:
        ctx.check_aborted()


def install_abort_checks(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if next(module.children(), None) is None:
            module.register_forward_pre_hook(_check_abort_hook)
    return model


@contextlib.contextmanager
def abort_checks(ctx):
    """Within this block the abort hooks of any network this thread runs consult ``ctx``."""
    previous = getattr(_running, "ctx", None)
    _running.ctx = ctx
    try:
        yield
    finally:
        _running.ctx = previous


class TorchModel(LoadedModel):
    """``spec`` + an ``nn.Module``; images travel as 1 x C x H x W tensors.

    ``value_range``: the range the network expects and produces (DeblurGAN-v2: [-1, 1]); ``None`` passes
    values through unchanged (colorize feeds L in [0, 100] and gets ab). CPU bf16 runs under autocast in
    channels-last layout; fp16 (CUDA) converts the module.
    """

    def __init__(self, spec: ModelSpec, model: nn.Module, device: str = "cpu", precision: str = "fp32", *,
                 value_range: tuple[float, float] | None = (0.0, 1.0), channels_last: bool | None = None):
        super().__init__(spec, device, precision)
        self.value_range = value_range
        if channels_last is None:
            channels_last = device == "cpu" and precision in ("bf16", "mixed")
        self.channels_last = channels_last
        model = model.to(device)
        if precision == "fp16":
            model = model.half()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = install_abort_checks(model.eval().requires_grad_(False))
        self._lock = threading.Lock()  # one forward at a time per model; a stage runs one request anyway

    # ------------------------------------------------------------------ array <-> tensor
    def to_tensor(self, image: np.ndarray) -> torch.Tensor:
        chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
        tensor = torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32))[None]
        if self.value_range not in (None, (0.0, 1.0)):
            low, high = self.value_range
            tensor = tensor * (high - low) + low
        return tensor

    def to_array(self, tensor: torch.Tensor) -> np.ndarray:
        """1 x C x H x W (any dtype/device) -> H x W x C float32."""
        out = tensor.float().cpu()
        if self.value_range not in (None, (0.0, 1.0)):
            low, high = self.value_range
            out = (out - low) / (high - low)
        return out[0].permute(1, 2, 0).numpy()

    def place(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device)
        if self.precision == "fp16":
            tensor = tensor.half()
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    # ------------------------------------------------------------------ running
    def run(self, tensor: torch.Tensor) -> torch.Tensor:
        """The network on a placed batch; subclasses split it where a precision needs that."""
        with torch.autocast(tensor.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(tensor)

    def run_batch(self, batch: torch.Tensor, ctx=None) -> torch.Tensor:
        with self._lock, abort_checks(ctx), torch.inference_mode():
            return self.run(self.place(batch))

    def forward(self, image: np.ndarray, ctx=None) -> np.ndarray:
        return self.to_array(self.run_batch(self.to_tensor(image), ctx))
