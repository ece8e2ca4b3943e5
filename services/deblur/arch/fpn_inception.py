"""DeblurGAN-v2 FPN-Inception generator, state-dict compatible with the official ``fpn_inception.h5``
(keys without the DataParallel ``module.`` prefix).

Backbone: Inception-ResNet-v2 stored as ``fpn.inception``; the ``enc*`` containers share its modules, so the
state dict lists those weights under both names, as the reference's does. Unpadded backbone convolutions
give odd map sizes, which the top-down path reflection-pads back to 1/32, 1/16, 1/8, 1/4 and 1/2 of the
input. Input: N x 3 x H x W in [-1, 1], H and W multiples of 32; output the same shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fpn_head import FPNGeneratorTail, conv_norm_relu, upsample
from .inception_resnet_v2 import InceptionResNetV2


class FPN(nn.Module):
    def __init__(self, num_filters: int = 256):
        super().__init__()
        self.inception = net = InceptionResNetV2(num_classes=1000)
        self.enc0 = net.conv2d_1a
        self.enc1 = nn.Sequential(net.conv2d_2a, net.conv2d_2b, net.maxpool_3a)   # 64 ch
        self.enc2 = nn.Sequential(net.conv2d_3b, net.conv2d_4a, net.maxpool_5a)   # 192 ch
        self.enc3 = nn.Sequential(net.mixed_5b, net.repeat, net.mixed_6a)          # 1088 ch
        self.enc4 = nn.Sequential(net.repeat_1, net.mixed_7a)                      # 2080 ch
        self.td1 = conv_norm_relu(num_filters, num_filters)
        self.td2 = conv_norm_relu(num_filters, num_filters)
        self.td3 = conv_norm_relu(num_filters, num_filters)
        self.pad = nn.ReflectionPad2d(1)
        self.lateral4 = nn.Conv2d(2080, num_filters, kernel_size=1, bias=False)
        self.lateral3 = nn.Conv2d(1088, num_filters, kernel_size=1, bias=False)
        self.lateral2 = nn.Conv2d(192, num_filters, kernel_size=1, bias=False)
        self.lateral1 = nn.Conv2d(64, num_filters, kernel_size=1, bias=False)
        self.lateral0 = nn.Conv2d(32, num_filters // 2, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc0 = self.enc0(x)
        enc1 = self.enc1(enc0)
        enc2 = self.enc2(enc1)
        enc3 = self.enc3(enc2)
        enc4 = self.enc4(enc3)
        map4 = self.pad(self.lateral4(enc4))
        map3 = self.td1(self.pad(self.lateral3(enc3)) + upsample(map4, 2))
        map2 = self.td2(F.pad(self.lateral2(enc2), (1, 2, 1, 2), "reflect") + upsample(map3, 2))
        map1 = self.td3(self.pad(self.lateral1(enc1)) + upsample(map2, 2))
        return F.pad(self.lateral0(enc0), (0, 1, 0, 1), "reflect"), map1, map2, map3, map4


class FPNInception(FPNGeneratorTail):
    """Generator; ``forward`` expects a batch of ONE image (norms use that image's statistics)."""

    multiple = 32

    def __init__(self, num_filters: int = 128, num_filters_fpn: int = 256, output_ch: int = 3):
        super().__init__(num_filters, num_filters_fpn, output_ch)
        self.fpn = FPN(num_filters=num_filters_fpn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x, self.fpn(x))
