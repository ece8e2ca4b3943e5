"""Normalisation layers that always use the input's own statistics, as DeblurGAN-v2 is run for inference.

The official predictor puts the whole generator in train mode ("GAN inference should be in train mode to
use actual stats in norm layers"): every BatchNorm and InstanceNorm then normalises with the statistics of
the image being processed. Train mode would also update the running buffers on every call, i.e. mutate a
shared model. These layers compute exactly the train-mode output (batch of one) without touching any
buffer, so one model object can serve concurrent requests; their parameter and buffer names equal
PyTorch's, so the official state dicts load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InputStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d in train-mode arithmetic, buffers untouched. Use with a batch of one image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)


class InputStatsInstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm2d(affine=False, track_running_stats=True) as DeblurGAN-v2 declares it (so the state dict
    carries running_mean / running_var / num_batches_tracked), normalising with the input's statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=False, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, None, None, None, None, use_input_stats=True, eps=self.eps)
