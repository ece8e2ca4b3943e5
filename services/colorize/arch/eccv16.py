"""ECCV16 colorization network ("Colorful Image Colorization", Zhang, Isola, Efros 2016).

Module names and the order inside each ``nn.Sequential`` follow the official PyTorch port so that the
released ``colorization_release_v2-9b330a0b.pth`` loads with ``strict=True``:
``model1`` .. ``model8`` (conv / ReLU / BatchNorm runs, BatchNorm last), ``model_out`` (1x1, no bias).

Input: L in [0, 100], N x 1 x H x W (H, W multiples of 8). Output: ab (Lab units), N x 2 x H x W.
The network predicts a distribution over 313 quantised ab bins at 1/4 resolution; ``model_out`` holds the
bin centres (/110), so the output is the distribution's mean, upsampled x4 (bilinear).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

L_CENT, L_NORM, AB_NORM = 50.0, 100.0, 110.0


def conv_run(channels: list[int], strides: list[int] | None = None, dilation: int = 1,
             norm: bool = True) -> nn.Sequential:
    """Convolutions 3x3 (each followed by ReLU) from channels[0] through channels[1:], then BatchNorm."""
    strides = strides or [1] * (len(channels) - 1)
    layers: list[nn.Module] = []
    for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation),
                   nn.ReLU(inplace=True)]
    if norm:
        layers.append(nn.BatchNorm2d(channels[-1]))
    return nn.Sequential(*layers)


class ECCV16(nn.Module):
    def __init__(self, bins: int = 313):
        super().__init__()
        self.model1 = conv_run([1, 64, 64], strides=[1, 2])
        self.model2 = conv_run([64, 128, 128], strides=[1, 2])
        self.model3 = conv_run([128, 256, 256, 256], strides=[1, 1, 2])
        self.model4 = conv_run([256, 512, 512, 512])
        self.model5 = conv_run([512, 512, 512, 512], dilation=2)
        self.model6 = conv_run([512, 512, 512, 512], dilation=2)
        self.model7 = conv_run([512, 512, 512, 512])
        head = [nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        head += list(conv_run([256, 256, 256], norm=False))
        head.append(nn.Conv2d(256, bins, 1))
        self.model8 = nn.Sequential(*head)
        self.model_out = nn.Conv2d(bins, 2, 1, bias=False)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        x = (lightness - L_CENT) / L_NORM
        for block in (self.model1, self.model2, self.model3, self.model4, self.model5, self.model6,
                      self.model7, self.model8):
            x = block(x)
        ab = self.model_out(torch.softmax(x, dim=1))
        return F.interpolate(ab, scale_factor=4, mode="bilinear") * AB_NORM
