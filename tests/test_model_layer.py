"""The shared model layer: size requirements, the one pad-run-crop-clamp call, the registry's default rule and
loading, and progress/abort (StageContext, the tiler, torch networks between layers)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from shared.contract import Aborted, ModelUnavailable, StageContext
from shared.model_layer import LoadedModel, ModelRegistry, ModelSpec, SizeRequirements, select_precision
from shared.model_store import ModelFile, ModelStore
from shared.tiling import process_tiled
from shared.torch_model import TorchModel


def test_size_requirements():
    assert SizeRequirements().padded_size(5, 7) == (5, 7)
    assert SizeRequirements(minimum=64, multiple_of=32).padded_size(5, 3) == (64, 64)
    assert SizeRequirements(multiple_of=32).padded_size(65, 64) == (96, 64)
    assert SizeRequirements(multiple_of=8, square=True).padded_size(9, 30) == (32, 32)


class Doubler(LoadedModel):
    """x2 nearest-neighbour upscale of 2 * input: out of range on purpose, records what it was given."""

    def forward(self, image, ctx=None):
        self.seen = image.copy()
        return np.repeat(np.repeat(image * 2, 2, axis=0), 2, axis=1)


def spec(name="net", **kwargs) -> ModelSpec:
    fields = dict(description="", license="MIT", files=(ModelFile(name, f"{name}.bin", f"fetch {name}"),),
                  load=lambda spec, paths, device, precision: Doubler(spec, device, precision),
                  fetch_command=f"fetch {name}")
    fields.update(kwargs)
    return ModelSpec(name=name, **fields)


def test_the_one_call_pads_runs_crops_and_clamps():
    model = Doubler(spec(scale=2, size=SizeRequirements(multiple_of=4)))
    tile = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    out = model(tile)
    assert model.seen.shape == (8, 8, 3)
    assert np.array_equal(model.seen[:5, :7], tile) and np.array_equal(model.seen[5, :7], tile[3])  # mirrored
    assert out.shape == (10, 14, 3) and out.dtype == np.float32
    assert np.array_equal(out, np.clip(np.repeat(np.repeat(tile * 2, 2, 0), 2, 1), 0, 1))

    grey = Doubler(spec(scale=2, size=SizeRequirements(minimum=8), pad_mode="constant", pad_value=0.5,
                        output_range=None))
    out = grey(tile)
    assert np.all(grey.seen[5:] == 0.5) and out.max() > 1.0  # constant pad; no clamp when the range is open


def test_registry_default_rule_status_and_lazy_loading(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    loads = []

    def slow_load(spec, paths, device, precision):
        loads.append(spec.name)
        time.sleep(0.05)
        return Doubler(spec, device, precision)

    registry = ModelRegistry("toy", [spec("a", load=slow_load), spec("b", load=slow_load)], store=store,
                             preference=("b", "a"))
    assert registry.default_name() is None
    with pytest.raises(ModelUnavailable, match="fetch b"):
        registry.resolve("auto")
    assert [n for n, m in registry.status().items() if m["default"]] == ["b"]  # what auto will ask for
    (tmp_path / "a.bin").write_bytes(b"x")
    assert registry.resolve(None) == registry.resolve("auto") == "a"
    (tmp_path / "b.bin").write_bytes(b"x")
    assert registry.default_name() == "b"
    monkeypatch.setenv("TOY_DEFAULT_MODEL", "a")
    assert registry.default_name() == "a"
    status = registry.status()["a"]
    assert status["available"] and status["default"] and status["license"] == "MIT"
    assert status["precision"] == "fp32" and status["files"][0]["file"] == "a.bin"

    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.load("b"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["b"] and all(model is got[0] for model in got)

    def broken(spec, paths, device, precision):
        raise ValueError("truncated")
    (tmp_path / "c.bin").write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        ModelRegistry("toy", [spec("c", load=broken)], store=store).load("c")


def test_precision_rule():
    both = spec(precisions=("fp32", "bf16", "fp16"), cpu_precision="bf16")
    assert select_precision(both, "cuda") == "fp16"
    assert select_precision(spec(), "cuda") == "fp32"
    assert select_precision(spec(), "cpu") == "fp32"
    assert select_precision(both, "cpu", "fp32") == "fp32"
    with pytest.raises(ValueError):
        select_precision(spec(), "cpu", "bf16")


def test_progress_and_sub_progress():
    ctx = StageContext()
    part = ctx.sub_progress(0.5, 0.4)
    part.set_progress(0.5)
    assert ctx.progress_value == pytest.approx(0.7)
    part.sub_progress(0.0, 0.5).set_progress(1.0)
    assert ctx.progress_value == pytest.approx(0.7)  # never moves backwards
    part.set_progress(1.0)
    assert ctx.progress_value == pytest.approx(0.9)
    calls = []
    ctx.on_abort(lambda: calls.append(1))
    assert not ctx.aborted
    ctx.abort()
    ctx.abort()
    assert calls == [1] and part.aborted
    with pytest.raises(Aborted):
        part.check_aborted()


def test_tiler_checks_abort_before_every_tile():
    ctx = StageContext()
    calls = []

    def fn(tile):
        calls.append(1)
        if len(calls) == 2:
            ctx.abort()
        return tile

    image = np.zeros((100, 100, 3), np.float32)
    with pytest.raises(Aborted):
        process_tiled(image, fn, tile=32, overlap=8, context=4, ctx=ctx)
    assert len(calls) == 2


def test_torch_model_aborts_between_layers():
    """An abort that arrives while a network runs stops it at the next layer, not at the end."""
    ctx = StageContext()
    ran = []

    class Layer(torch.nn.Module):
        def forward(self, x):
            ran.append(1)
            if len(ran) == 3:
                ctx.abort()
            return x

    model = TorchModel(spec(output_range=None), torch.nn.Sequential(*[Layer() for _ in range(10)]))
    tile = np.ones((4, 4, 3), np.float32)
    with pytest.raises(Aborted):
        model(tile, ctx)
    assert len(ran) == 3
    ran.clear()
    assert np.array_equal(model(tile), tile) and len(ran) == 10  # no context: nothing to abort
