"""SRVGGNetCompact, Real-ESRGAN's compact VGG-style super-resolution network.

A plain stack of 3x3 convs with per-channel PReLU at the input resolution, a final conv to
``3 * upscale**2`` channels, pixel-shuffle, plus the nearest-neighbour upsampled input as a residual.
Parameter names match Real-ESRGAN's ``SRVGGNetCompact`` (``body.<i>.weight`` / ``.bias``), so
``realesr-general-x4v3``, its ``-wdn-`` twin and ``realesr-animevideov3`` load with ``strict=True``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SRVGGNetCompact(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4, act_type: str = "prelu"):
        super().__init__()
        self.scale = upscale
        self.num_out_ch = num_out_ch

        def activation() -> nn.Module:
            if act_type == "prelu":
                return nn.PReLU(num_parameters=num_feat)
            if act_type == "relu":
                return nn.ReLU(inplace=True)
            if act_type == "leakyrelu":
                return nn.LeakyReLU(0.1, inplace=True)
            raise ValueError(f"unknown activation {act_type!r}")

        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), activation()]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), activation()]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    input_multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
