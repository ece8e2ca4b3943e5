"""RRDBNet, the ESRGAN / Real-ESRGAN generator (Wang et al., 2018/2021).

Written from the papers' description; parameter names follow basicsr's ``RRDBNet`` so the official
checkpoints (``RealESRGAN_x4plus``, ``RealESRGAN_x2plus``, ``RealESRGAN_x4plus_anime_6B``) load with
``strict=True``. The network always upsamples x4 internally; for scale 2 (or 1) the input is first folded
with pixel-unshuffle by 2 (or 4), which multiplies the input channels by 4 (or 16).
This module never touches image files: tensors in, tensors out.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DenseBlock(nn.Module):
    """Five 3x3 convs, each fed the concatenation of the block input and all previous outputs."""

    def __init__(self, feat: int = 64, grow: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(feat, grow, 3, 1, 1)
        self.conv2 = nn.Conv2d(feat + grow, grow, 3, 1, 1)
        self.conv3 = nn.Conv2d(feat + 2 * grow, grow, 3, 1, 1)
        self.conv4 = nn.Conv2d(feat + 3 * grow, grow, 3, 1, 1)
        self.conv5 = nn.Conv2d(feat + 4 * grow, feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2, inplace=True)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + 0.2 * x5


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a scaled residual connection."""

    def __init__(self, feat: int = 64, grow: int = 32):
        super().__init__()
        self.rdb1 = DenseBlock(feat, grow)
        self.rdb2 = DenseBlock(feat, grow)
        self.rdb3 = DenseBlock(feat, grow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError("RRDBNet supports scale 1, 2 or 4")
        self.scale = scale
        self.unshuffle = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (pixel-unshuffle factor)."""
        return self.unshuffle

    # forward = upsample(head + trunk(head)); the three parts are public so an inference engine can run
    # the costly trunk in a lower precision while keeping the residual stream and the output in fp32.
    def head(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        return self.conv_first(x)

    def trunk(self, feat: torch.Tensor) -> torch.Tensor:
        return self.conv_body(self.body(feat))

    def upsample(self, feat: torch.Tensor) -> torch.Tensor:
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2, inplace=True)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2, inplace=True)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2, inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        return self.upsample(feat + self.trunk(feat))
