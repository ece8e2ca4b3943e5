"""DeblurGAN-v2 FPN-MobileNet generator (Kupyn et al., ICCV 2019), state-dict compatible with the official
``fpn_mobilenet.h5`` (keys without the DataParallel ``module.`` prefix).

Backbone: MobileNetV2 (width 1.0) ``features``; the FPN taps features[0:2] (1/2, 16 ch), [2:4] (1/4, 24),
[4:7] (1/8, 32), [7:11] (1/16, 64) and [11:16] (1/32, 160). Features 16-18 are unused in the forward pass
but are part of the checkpoint, so they are built too. The ``enc*`` containers share their modules with
``features`` exactly as the reference does, so the state dict lists those weights under both names.
Input: N x 3 x H x W in [-1, 1], H and W multiples of 32; output the same shape in [-1, 1].
"""
from __future__ import annotations

import torch
from torch import nn

from .fpn_head import FPNGeneratorTail, conv_norm_relu, upsample
from .norms import InputStatsBatchNorm2d

# MobileNetV2 inverted-residual settings: expansion t, channels c, repeats n, first stride s
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(num_in: int, num_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(num_in, num_out, kernel, stride, kernel // 2, bias=False),
                         InputStatsBatchNorm2d(num_out), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, num_in: int, num_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(num_in * expand_ratio)
        self.use_residual = stride == 1 and num_in == num_out
        layers: list[nn.Module] = []
        if expand_ratio != 1:  # pointwise expansion
            layers += [nn.Conv2d(num_in, hidden, 1, 1, 0, bias=False), InputStatsBatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
                   InputStatsBatchNorm2d(hidden), nn.ReLU6(),
                   nn.Conv2d(hidden, num_out, 1, 1, 0, bias=False), InputStatsBatchNorm2d(num_out)]  # linear
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def mobilenet_v2_features(last_channel: int = 1280) -> nn.Sequential:
    layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
    channels = 32
    for expand, out, repeats, stride in MOBILENET_V2_SETTINGS:
        for i in range(repeats):
            layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
            channels = out
    layers.append(_conv_bn_relu6(channels, last_channel, 1, 1))
    return nn.Sequential(*layers)


class FPN(nn.Module):
    def __init__(self, num_filters: int = 128):
        super().__init__()
        self.features = mobilenet_v2_features()
        self.enc0 = nn.Sequential(*self.features[0:2])
        self.enc1 = nn.Sequential(*self.features[2:4])
        self.enc2 = nn.Sequential(*self.features[4:7])
        self.enc3 = nn.Sequential(*self.features[7:11])
        self.enc4 = nn.Sequential(*self.features[11:16])
        self.td1 = conv_norm_relu(num_filters, num_filters)
        self.td2 = conv_norm_relu(num_filters, num_filters)
        self.td3 = conv_norm_relu(num_filters, num_filters)
        self.lateral4 = nn.Conv2d(160, num_filters, kernel_size=1, bias=False)
        self.lateral3 = nn.Conv2d(64, num_filters, kernel_size=1, bias=False)
        self.lateral2 = nn.Conv2d(32, num_filters, kernel_size=1, bias=False)
        self.lateral1 = nn.Conv2d(24, num_filters, kernel_size=1, bias=False)
        self.lateral0 = nn.Conv2d(16, num_filters // 2, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc0 = self.enc0(x)
        enc1 = self.enc1(enc0)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        enc4 = self.enc4(enc3)
        map4 = self.lateral4(enc4)
        map3 = self.td1(self.lateral3(enc3) + upsample(map4, 2))
        map2 = self.td2(self.lateral2(enc2) + upsample(map3, 2))
        map1 = self.td3(self.lateral1(enc1) + upsample(map2, 2))
        return self.lateral0(enc0), map1, map2, map3, map4


class FPNMobileNet(FPNGeneratorTail):
    """Generator; ``forward`` expects a batch of ONE image (norms use that image's statistics)."""

    multiple = 32

    def __init__(self, num_filters: int = 64, num_filters_fpn: int = 128, output_ch: int = 3):
        super().__init__(num_filters, num_filters_fpn, output_ch)
        self.fpn = FPN(num_filters=num_filters_fpn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x, self.fpn(x))
