"""SIGGRAPH17 colorization network ("Real-Time User-Guided Image Colorization with Learned Deep Priors",
Zhang, Zhu et al. 2017), automatic mode (no user hints).

Module names follow the official PyTorch port so that ``siggraph17-df00044c.pth`` loads with
``strict=True``: an encoder ``model1`` .. ``model7`` (subsampling by strided slicing between the first
blocks), a decoder with transposed convolutions ``model8up`` / ``model9up`` / ``model10up`` plus skip
convolutions ``model3short8`` / ``model2short9`` / ``model1short10``, ``model_class`` (the 529-way
classification head, unused for the output but part of the checkpoint) and ``model_out`` (1x1 + tanh).

Input: L in [0, 100], N x 1 x H x W (H, W multiples of 8); optional ab hints and mask. Output: ab.
"""
from __future__ import annotations

import torch
from torch import nn

from .eccv16 import AB_NORM, L_CENT, L_NORM, conv_run


def relu_convs(channels: list[int], tail: nn.Module | None) -> nn.Sequential:
    """ReLU, then 3x3 convolutions each followed by ReLU, the last followed by ``tail`` instead."""
    layers: list[nn.Module] = [nn.ReLU(inplace=True)]
    pairs = list(zip(channels[:-1], channels[1:]))
    for index, (c_in, c_out) in enumerate(pairs):
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
        if index < len(pairs) - 1:
            layers.append(nn.ReLU(inplace=True))
    layers += [nn.ReLU(inplace=True), tail] if isinstance(tail, nn.BatchNorm2d) else [tail]
    return nn.Sequential(*layers)


class SIGGRAPH17(nn.Module):
    def __init__(self, classes: int = 529):
        super().__init__()
        self.model1 = conv_run([4, 64, 64])
        self.model2 = conv_run([64, 128, 128])
        self.model3 = conv_run([128, 256, 256, 256])
        self.model4 = conv_run([256, 512, 512, 512])
        self.model5 = conv_run([512, 512, 512, 512], dilation=2)
        self.model6 = conv_run([512, 512, 512, 512], dilation=2)
        self.model7 = conv_run([512, 512, 512, 512])
        self.model8up = nn.Sequential(nn.ConvTranspose2d(512, 256, 4, stride=2, padding=1))
        self.model8 = relu_convs([256, 256, 256], nn.BatchNorm2d(256))
        self.model9up = nn.Sequential(nn.ConvTranspose2d(256, 128, 4, stride=2, padding=1))
        self.model9 = relu_convs([128, 128], nn.BatchNorm2d(128))
        self.model10up = nn.Sequential(nn.ConvTranspose2d(128, 128, 4, stride=2, padding=1))
        self.model10 = relu_convs([128, 128], nn.LeakyReLU(negative_slope=0.2))
        self.model3short8 = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1))
        self.model2short9 = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1))
        self.model1short10 = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1))
        self.model_class = nn.Sequential(nn.Conv2d(256, classes, 1))
        self.model_out = nn.Sequential(nn.Conv2d(128, 2, 1), nn.Tanh())

    def forward(self, lightness: torch.Tensor, hint_ab: torch.Tensor | None = None,
                hint_mask: torch.Tensor | None = None) -> torch.Tensor:
        if hint_ab is None:
            hint_ab = lightness.new_zeros(lightness.shape[0], 2, *lightness.shape[2:])
        if hint_mask is None:
            hint_mask = torch.zeros_like(lightness)
        x = torch.cat(((lightness - L_CENT) / L_NORM, hint_ab / AB_NORM, hint_mask), dim=1)
        c1 = self.model1(x)
        c2 = self.model2(c1[:, :, ::2, ::2])
        c3 = self.model3(c2[:, :, ::2, ::2])
        c7 = self.model7(self.model6(self.model5(self.model4(c3[:, :, ::2, ::2]))))
        c8 = self.model8(self.model8up(c7) + self.model3short8(c3))
        c9 = self.model9(self.model9up(c8) + self.model2short9(c2))
        c10 = self.model10(self.model10up(c9) + self.model1short10(c1))
        return self.model_out(c10) * AB_NORM
