"""Pieces shared by both DeblurGAN-v2 FPN generators: the per-level heads and the decoder tail."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norms import InputStatsInstanceNorm2d


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="nearest")


class FPNHead(nn.Module):
    """Two bias-free 3x3 convs with ReLU (keys block0, block1)."""

    def __init__(self, num_in: int, num_mid: int, num_out: int):
        super().__init__()
        self.block0 = nn.Conv2d(num_in, num_mid, kernel_size=3, padding=1, bias=False)
        self.block1 = nn.Conv2d(num_mid, num_out, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.block1(F.relu(self.block0(x))))


def conv_norm_relu(num_in: int, num_out: int) -> nn.Sequential:
    """3x3 conv (with bias) -> instance norm -> ReLU; state-dict keys 0.* and 1.*."""
    return nn.Sequential(nn.Conv2d(num_in, num_out, kernel_size=3, padding=1),
                         InputStatsInstanceNorm2d(num_out), nn.ReLU())


class FPNGeneratorTail(nn.Module):
    """The decoder both generators share: heads on the four pyramid maps, merge at 1/4 scale, add the
    1/2-scale lateral map, upsample to full size, predict a residual: clamp(tanh(final) + x, -1, 1)."""

    def __init__(self, num_filters: int, num_filters_fpn: int, output_ch: int = 3):
        super().__init__()
        self.head1 = FPNHead(num_filters_fpn, num_filters, num_filters)
        self.head2 = FPNHead(num_filters_fpn, num_filters, num_filters)
        self.head3 = FPNHead(num_filters_fpn, num_filters, num_filters)
        self.head4 = FPNHead(num_filters_fpn, num_filters, num_filters)
        self.smooth = conv_norm_relu(4 * num_filters, num_filters)
        self.smooth2 = conv_norm_relu(num_filters, num_filters // 2)
        self.final = nn.Conv2d(num_filters // 2, output_ch, kernel_size=3, padding=1)

    def decode(self, x: torch.Tensor, maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        map0, map1, map2, map3, map4 = maps
        merged = torch.cat([upsample(self.head4(map4), 8), upsample(self.head3(map3), 4),
                            upsample(self.head2(map2), 2), self.head1(map1)], dim=1)
        smoothed = upsample(self.smooth(merged), 2)
        smoothed = upsample(self.smooth2(smoothed + map0), 2)
        return torch.clamp(torch.tanh(self.final(smoothed)) + x, min=-1.0, max=1.0)
