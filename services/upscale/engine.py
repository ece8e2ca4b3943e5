"""Inference engine: device and precision selection, and the per-tile function handed to the tiler.

Precision policy on CPU (each choice was checked against eager fp32 output, see bench/upscale.py):
- ``mixed`` for RRDBNet: head, residual stream and the x4 upsampling tail stay fp32; only the trunk
  (23 RRDB blocks, about 92% of the FLOPs) runs under bf16 autocast with channels_last. Plain bf16
  autocast of the whole net gave 44.0 dB against fp32 on a real photo crop; this split keeps >= 45 dB.
- ``bf16`` for SRVGGNetCompact (whole net under bf16 autocast, about 55 dB against fp32).
- ``fp32`` where the CPU has no native bf16 (AVX512-BF16 / AMX), or when UPSCALE_PRECISION=fp32.
On CUDA everything runs in fp16 (UPSCALE_DEVICE / UPSCALE_PRECISION override both choices).
"""
from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from shared.torch_weights import select_torch_device
from shared.settings import cached_settings

from .arch import RRDBNet
from .settings import UpscaleSettings

PRECISIONS = ("auto", "fp32", "bf16", "mixed", "fp16")
UPSAMPLE_HALO = 2            # feature rows of context for the strip-wise RRDBNet upsampling tail
UPSAMPLE_STRIP_PIXELS = 8192  # feature pixels per strip (x16 at the output resolution, 64 channels)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_device() -> torch.device:
    wanted = cached_settings(UpscaleSettings).upscale_device
    if wanted != "auto":
        return torch.device(wanted)
    return torch.device(select_torch_device())


def select_precision(net: nn.Module, device: torch.device, requested: str | None = None) -> str:
    requested = requested or cached_settings(UpscaleSettings).upscale_precision
    if requested not in PRECISIONS:
        raise ValueError(f"UPSCALE_PRECISION must be one of {PRECISIONS}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    if not cpu_has_bf16():
        return "fp32"
    return "mixed" if isinstance(net, RRDBNet) else "bf16"


class Engine:
    """A loaded network plus how to run it. Shared read-only between requests (inference mode only)."""

    def __init__(self, net: nn.Module, scale: int, *, device: torch.device | None = None,
                 precision: str | None = None):
        self.device = device or select_device()
        self.precision = select_precision(net, self.device, precision)
        self.scale = scale
        self.upsample_strip_pixels = UPSAMPLE_STRIP_PIXELS
        self.multiple = getattr(net, "input_multiple", 1)
        self.channels_last = self.device.type == "cpu" and self.precision in ("bf16", "mixed")
        net = net.to(self.device)
        if self.precision == "fp16":
            net = net.half()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.eval()
        self._lock = threading.Lock()  # one forward at a time per engine; the service runs one request anyway

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW float32 on CPU in [0, 1] -> NC(sH)(sW) float32 on CPU (not clipped)."""
        x = x.to(self.device)
        if self.precision == "fp16":
            x = x.half()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        net = self.net
        with self._lock, torch.inference_mode():
            if isinstance(net, RRDBNet):
                feat = net.head(x)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "mixed"):
                    trunk = net.trunk(feat)
                out = self._upsample_in_strips(net, feat + trunk.to(feat.dtype))
            elif self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    out = net(x)
            else:
                out = net(x)
        return out.float().cpu().contiguous()

    def _upsample_in_strips(self, net: RRDBNet, feat: torch.Tensor) -> torch.Tensor:
        """``net.upsample`` (x4 nearest + four 3x3 convs at 2x/4x resolution) over horizontal strips.

        Its receptive field is under 2 feature rows, so strips with a halo of UPSAMPLE_HALO rows give the
        same result as one call, while the 4x-resolution activations (the largest tensors of the network)
        stay at strip size: this is what lets RRDBNet tiles be large with bounded memory.
        """
        rows = feat.shape[2]
        step = max(8, self.upsample_strip_pixels // max(1, feat.shape[3]))
        if rows <= step:
            return net.upsample(feat)
        halo, factor = UPSAMPLE_HALO, 4
        parts = []
        for y0 in range(0, rows, step):
            y1 = min(rows, y0 + step)
            a0, a1 = max(0, y0 - halo), min(rows, y1 + halo)
            part = net.upsample(feat[:, :, a0:a1])
            parts.append(part[:, :, (y0 - a0) * factor:(y1 - a0) * factor])
        return torch.cat(parts, 2)

    def run_image(self, image: np.ndarray) -> np.ndarray:
        """H x W x C float32 (C = 3, or 4 with alpha) -> sH x sW x C float32, clipped to [0, 1].

        Alpha is upscaled by the same network (as Real-ESRGAN's ``alpha_upsampler='realesrgan'``): it is
        fed as a grey RGB image in the same batch and read back as luma.
        """
        height, width, channels = image.shape
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "edge"
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        batch = chw[None, :3]
        if channels == 4:
            batch = torch.cat([batch, chw[None, 3:4].expand(1, 3, -1, -1)], 0)
        out = self.forward(batch).clamp(0, 1)
        out = out[:, :, :height * self.scale, :width * self.scale]
        result = out[0].permute(1, 2, 0)
        if channels == 4:
            weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            alpha = (out[1] * weights).sum(0, keepdim=True).permute(1, 2, 0)
            result = torch.cat([result, alpha], 2)
        return np.ascontiguousarray(result.numpy())
