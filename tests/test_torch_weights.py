"""shared.torch_weights: safe, strict checkpoint loading shared by the model stages."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.torch_weights import load_strict, read_state_dict


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


@pytest.mark.parametrize("wrapper", [None, "model", "params_ema", "state_dict"])
def test_round_trip_through_every_wrapper_and_dataparallel_prefix(tmp_path, wrapper):
    source = small_net()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    loaded = load_strict(small_net(), read_state_dict(path))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_old_checkpoints_without_batch_counters_load(tmp_path):
    state = {k: v for k, v in small_net().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    load_strict(small_net(), read_state_dict(tmp_path / "old.pth"))


def test_strict_loading_and_no_pickled_code(tmp_path):
    state = small_net().state_dict()
    state.pop("0.weight")
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match="0.weight"):
        load_strict(small_net(), read_state_dict(tmp_path / "missing.pth"))
    torch.save({"0.weight": torch.zeros(1), "note": "text"}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="no state dict"):
        read_state_dict(tmp_path / "mixed.pth")
    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="[Ww]eights only"):
        read_state_dict(tmp_path / "evil.pth")


class Payload:  # an arbitrary object: loading it would need pickled code, which weights_only refuses
    pass
