"""Checkpoint loading for the model stages (imports torch, so only they import this module).

Every checkpoint is read with ``weights_only=True`` (no pickled code runs) and loaded strictly: a missing,
extra or mis-shaped tensor is an error, never a silently half-loaded network.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Containers the official checkpoints wrap their state dict in (DeblurGAN-v2: "model",
# Real-ESRGAN: "params_ema"/"params", others: "state_dict").
WRAPPER_KEYS = ("model", "params_ema", "params", "state_dict")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, unwrapped, with DataParallel's ``module.`` prefix removed."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{Path(path).name} holds no state dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_strict(net: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` into ``net`` strictly; returns it in eval mode with gradients off."""
    expected = net.state_dict()
    state = dict(state)
    for key in expected:  # checkpoints saved before torch 0.4.1 have no BatchNorm batch counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)
