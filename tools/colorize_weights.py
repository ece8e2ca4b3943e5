"""Random, well-scaled state dicts for the colorize networks (tests and benchmarks only).

The official weights cannot be downloaded in this environment, so the pipeline is checked for structure
and equivalence with the reference code using random weights: He-normal convolutions and BatchNorm
statistics that keep activations O(1), and output layers scaled so that the predicted ab varies with the
image content over a realistic range (|ab| of a few tens) instead of collapsing to a constant.
Never used by the service.
"""
from __future__ import annotations

import math

import torch


def random_state_dict(template: dict[str, torch.Tensor], model: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, value in template.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        shape = value.shape
        if key.endswith("weight") and value.ndim == 4:
            # ConvTranspose2d weights are (in, out, k, k): fan-in per output is in * k * k / stride^2
            transposed = key == "model8.0.weight" if model == "eccv16" else "up." in key
            fan_in = shape[0] * shape[2] * shape[3] / 4 if transposed else shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif key.endswith("running_mean"):
            out[key] = torch.randn(shape, generator=gen) * 0.1
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) * 1.5 + 0.5
        elif key.endswith("weight"):  # BatchNorm scale
            out[key] = torch.rand(shape, generator=gen) * 0.5 + 0.75
        else:  # biases
            out[key] = torch.randn(shape, generator=gen) * 0.05
    if model == "eccv16":
        # logits with a few units of spread, bin centres within the ab gamut (/110 as in the release)
        out["model8.6.weight"] *= 8.0
        out["model_out.weight"] = (torch.rand(2, 313, 1, 1, generator=gen) * 2 - 1) * (80 / 110)
    elif model == "siggraph17":
        out["model_out.0.weight"] *= 0.3
        out["model_out.0.bias"] *= 0.0
    else:
        raise KeyError(model)
    return out
