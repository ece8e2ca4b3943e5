"""How a Real-ESRGAN network runs: its precision split and the alpha plane (the shared model layer does
device/precision choice, padding, cropping and clamping).

Precision policy on CPU (each choice was checked against eager fp32 output, see bench/upscale.py):
- ``mixed`` for RRDBNet: head, residual stream and the x4 upsampling tail stay fp32; only the trunk
  (23 RRDB blocks, about 92% of the FLOPs) runs under bf16 autocast with channels_last. Plain bf16
  autocast of the whole net gave 44.0 dB against fp32 on a real photo crop; this split keeps >= 45 dB.
- ``bf16`` for SRVGGNetCompact (whole net under bf16 autocast, about 55 dB against fp32).
- ``fp32`` where the CPU has no native bf16 (AVX512-BF16 / AMX), or when UPSCALE_PRECISION=fp32.
On CUDA everything runs in fp16 (UPSCALE_DEVICE / UPSCALE_PRECISION override both choices).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.model_layer import ModelSpec, SizeRequirements, select_device, select_precision
from shared.torch_model import TorchModel

from .arch import RRDBNet

STAGE = "upscale"
UPSAMPLE_HALO = 2            # feature rows of context for the strip-wise RRDBNet upsampling tail
UPSAMPLE_STRIP_PIXELS = 8192  # feature pixels per strip (x16 at the output resolution, 64 channels)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def precisions_for(arch: type) -> tuple[tuple[str, ...], str]:
    """(supported precisions, the CPU choice) of an architecture."""
    if issubclass(arch, RRDBNet):
        return ("fp32", "mixed", "fp16"), "mixed"  # whole-net bf16 lost too much (see above)
    return ("fp32", "bf16", "fp16"), "bf16"


def _no_files(*_args, **_kwargs):
    raise RuntimeError("a bare network's spec has no weight files to load")


def network_spec(net: nn.Module, scale: int, name: str | None = None) -> ModelSpec:
    """A spec for a bare network (no files): what tests and benchmarks need to run one directly."""
    precisions, cpu = precisions_for(type(net))
    return ModelSpec(name=name or type(net).__name__, description="", license="", files=(), load=_no_files,
                     fetch_command="", scale=scale, size=SizeRequirements(multiple_of=getattr(net, "input_multiple", 1)),
                     precisions=precisions, cpu_precision=cpu)


class Engine(TorchModel):
    """A Real-ESRGAN network ready to run: ``engine(tile, ctx)`` / ``engine.run_image(tile)``.

    H x W x C float32 (C = 3, or 4 with alpha) -> sH x sW x C float32 in [0, 1]. Alpha is upscaled by the same
    network (as Real-ESRGAN's ``alpha_upsampler='realesrgan'``): fed as a grey RGB image in the same batch and
    read back as luma.
    """

    def __init__(self, net: nn.Module, scale: int, *, spec: ModelSpec | None = None, device: str | None = None,
                 precision: str | None = None):
        spec = spec or network_spec(net, scale)
        device = device or select_device(STAGE)
        super().__init__(spec, net, device, precision or select_precision(spec, device, stage=STAGE))
        self.upsample_strip_pixels = UPSAMPLE_STRIP_PIXELS

    @property
    def net(self) -> nn.Module:
        return self.model

    def run_image(self, image: np.ndarray, ctx=None) -> np.ndarray:
        return self(image, ctx)

    def forward(self, image: np.ndarray, ctx=None) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        rgb = batch[:, :3]
        if image.shape[2] == 4:
            rgb = torch.cat([rgb, batch[:, 3:4].expand(1, 3, -1, -1)], 0)
        out = self.run_batch(rgb, ctx).float().cpu()
        result = out[0].permute(1, 2, 0)
        if image.shape[2] == 4:
            alpha = (out[1].clamp(0, 1) * torch.tensor(LUMA_WEIGHTS).view(3, 1, 1)).sum(0, keepdim=True)
            result = torch.cat([result, alpha.permute(1, 2, 0)], 2)
        return result.numpy()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        net = self.model
        if isinstance(net, RRDBNet):
            feat = net.head(x)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "mixed"):
                trunk = net.trunk(feat)
            return self._upsample_in_strips(net, feat + trunk.to(feat.dtype))
        return super().run(x)

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
