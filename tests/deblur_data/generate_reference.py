"""Regenerate the DeblurGAN-v2 reference data used by tests/test_deblur.py (not run by the tests).

It needs the official code, which is not part of this repository:
  * VITA-Group/DeblurGANv2 ``models/fpn_mobilenet.py``, ``models/fpn_inception.py``, ``models/mobilenet_v2.py``
    in ``$REF/models/``;
  * Cadene/pretrained-models.pytorch ``pretrainedmodels/models/inceptionresnetv2.py`` reachable as
    ``pretrainedmodels.inceptionresnetv2`` (a stub package whose ``inceptionresnetv2()`` returns
    ``InceptionResNetV2(num_classes=1000)``: the 'imagenet' layout, without the download);
  * a ``torchsummary`` stub module.

    PYTHONPATH=$REF python tests/deblur_data/generate_reference.py

Writes ``deblurgan_v2_keys.json`` (the generator's state-dict keys and shapes exactly as the official
training saves them: ``nn.DataParallel`` around the generator, hence the ``module.`` prefix) and
``deblurgan_v2_reference.npz`` (the official code's train-mode output, stored as float16, for the input
``reference_input`` and the weights ``reference_weights`` below draw; the test draws the same ones).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
# (model, input H, W): the inception backbone needs at least 128 px per side
CASES = (("fpn_mobilenet", 64, 96), ("fpn_inception", 128, 128))


def reference_weights(state: dict, seed: int) -> dict:
    """Deterministic random weights (NumPy's frozen legacy RandomState); shared tensors get one draw."""
    rng = np.random.RandomState(seed)
    drawn: dict[int, torch.Tensor] = {}
    out = {}
    for key in sorted(state):
        tensor = state[key]
        if id(tensor) in drawn:
            out[key] = drawn[id(tensor)]
            continue
        shape = tuple(tensor.shape)
        if not tensor.dtype.is_floating_point:
            value = torch.zeros(shape, dtype=tensor.dtype)
        elif key.endswith("running_var"):
            value = torch.from_numpy(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif key.endswith("weight") and len(shape) == 1:
            value = torch.from_numpy((1 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        else:
            scale = 0.01 if key.endswith("final.weight") else 0.05
            value = torch.from_numpy((scale * rng.standard_normal(shape)).astype(np.float32))
        drawn[id(tensor)] = out[key] = value
    return out


def reference_input(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.RandomState(seed)
    return rng.uniform(-1, 1, (1, 3, height, width)).astype(np.float32)


def main() -> None:
    from models.fpn_inception import FPNInception
    from models.fpn_mobilenet import FPNMobileNet

    norm = functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=True)
    builders = {"fpn_mobilenet": lambda: FPNMobileNet(norm_layer=norm, pretrained=False),
                "fpn_inception": lambda: FPNInception(norm_layer=norm)}
    keys, arrays = {}, {}
    for index, (name, height, width) in enumerate(CASES):
        wrapped = nn.DataParallel(builders[name]())
        keys[name] = [[k, list(v.shape)] for k, v in wrapped.state_dict().items()]
        generator = wrapped.module
        generator.load_state_dict(reference_weights(generator.state_dict(keep_vars=True), seed=index))
        generator.train(True)  # as the official predictor
        x = reference_input(height, width, seed=100 + index)
        with torch.no_grad():
            arrays[name] = generator(torch.from_numpy(x)).numpy().astype(np.float16)
    (HERE / "deblurgan_v2_keys.json").write_text(
        "{\n" + ",\n".join(f'"{name}": [\n' + ",\n".join(json.dumps(entry) for entry in entries) + "\n]"
                           for name, entries in keys.items()) + "\n}\n")
    np.savez_compressed(HERE / "deblurgan_v2_reference.npz", **arrays)


if __name__ == "__main__":
    main()
