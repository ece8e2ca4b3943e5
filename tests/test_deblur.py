"""Deblur stage: DeblurGAN-v2 structure/equivalence with random weights, MAXIM-3S (our PyTorch port) against
the TensorFlow graph it was exported as, tiling, params and the HTTP service.

MAXIM tests need the provisioned model (``python -m services.deblur.fetch maxim-3s-gopro``) and the reference
oracle (``python -m tools.maxim_reference``: TensorFlow's output and the TF -> ONNX conversion; both in CI);
DeblurGAN-v2's official weights cannot be downloaded here, so its tests use random weights only to check
the architecture against the official code (key names, shapes, outputs) and the pre/post-processing.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from shared.contract import ModelUnavailable, StageContext
from shared.imaging import Picture
from shared.model_store import ModelStore
from shared.settings import ConfigurationError

from services.deblur.maxim_runner import (CONTEXT, DEFAULT_MAX_WINDOW_PIXELS, MULTIPLE, MaximRunner, _fade_weights,
                                          choose_precision, load_maxim, plan_tiles)
from services.deblur.models import (INCEPTION, MAXIM, MAXIM_STATE_DIGEST, MODEL_FILES, MOBILENET, DeblurModels,
                                    build_generator, load_deblurgan)
from services.deblur.stage import deblur_array, make_deblur, tiling_for
from tools.maxim_reference import BUILD_COMMAND, OrtMaxim, reference_paths

DATA = Path(__file__).resolve().parent / "deblur_data"
sys.path.insert(0, str(DATA))
from generate_reference import CASES, reference_input, reference_weights  # noqa: E402

ARCH = {MOBILENET: "fpn_mobilenet", INCEPTION: "fpn_inception"}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def motion_blur(rgb: np.ndarray, length: int = 9) -> np.ndarray:
    import cv2
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0 / length
    return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT)


def random_checkpoint(name: str, path: Path, seed: int = 0, prefix: str = "module.") -> dict:
    model = build_generator(name)
    state = reference_weights(model.state_dict(keep_vars=True), seed=seed)
    torch.save({"model": {prefix + k: v for k, v in state.items()}}, path)
    return state


# ------------------------------------------------------------------------------------------ DeblurGAN-v2

@pytest.fixture(scope="module")
def official_keys() -> dict:
    return json.loads((DATA / "deblurgan_v2_keys.json").read_text())


@pytest.mark.parametrize("name", [MOBILENET, INCEPTION])
def test_state_dict_matches_official_generator(name, official_keys):
    """Our generator's keys and shapes are exactly those the official training code saves."""
    expected = {key.removeprefix("module."): tuple(shape) for key, shape in official_keys[ARCH[name]]}
    assert all(key.startswith("module.") for key, _ in official_keys[ARCH[name]])
    got = {key: tuple(value.shape) for key, value in build_generator(name).state_dict().items()}
    assert got == expected
    assert len(got) == {MOBILENET: 622, INCEPTION: 2384}[name]


@pytest.mark.parametrize("name", [MOBILENET, INCEPTION])
def test_checkpoint_round_trip_through_loader(name, tmp_path):
    """A random {'model': state_dict} with DataParallel's prefix loads (weights_only) into every tensor."""
    path = tmp_path / "ckpt.h5"
    state = random_checkpoint(name, path, seed=3)
    model = load_deblurgan(name, path)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loader_rejects_a_wrong_checkpoint(tmp_path):
    path = tmp_path / "ckpt.h5"
    state = random_checkpoint(MOBILENET, path, prefix="")  # no prefix is fine too
    load_deblurgan(MOBILENET, path)
    del state["fpn.lateral4.weight"]
    torch.save({"model": state}, path)
    with pytest.raises(RuntimeError, match="lateral4"):
        load_deblurgan(MOBILENET, path)
    random_checkpoint(INCEPTION, path)
    with pytest.raises(RuntimeError):
        load_deblurgan(MOBILENET, path)


@pytest.mark.parametrize("name", [MOBILENET, INCEPTION])
def test_output_equals_official_code(name):
    """Same random weights, same input: our generator reproduces the official code's train-mode output
    (stored by tests/deblur_data/generate_reference.py from the official DeblurGAN-v2 code)."""
    index = [case[0] for case in CASES].index(ARCH[name])
    _, height, width = CASES[index]
    model = build_generator(name)
    model.load_state_dict(reference_weights(model.state_dict(keep_vars=True), seed=index))
    model.eval()
    with torch.inference_mode():
        out = model(torch.from_numpy(reference_input(height, width, seed=100 + index))).numpy()
    with np.load(DATA / "deblurgan_v2_reference.npz") as ref:
        expected = ref[ARCH[name]].astype(np.float32)
    assert out.shape == expected.shape
    assert 0.05 < np.mean(np.abs(out) < 0.999)  # not saturated everywhere: a meaningful comparison
    assert np.abs(out - expected).max() < 2e-3  # float16 storage
    assert np.abs(out - expected).mean() < 2e-4


@pytest.fixture(scope="module")
def random_gan_store(tmp_path_factory) -> ModelStore:
    """A model cache holding random-weight DeblurGAN-v2 checkpoints (structure tests only)."""
    store = ModelStore(tmp_path_factory.mktemp("deblur-cache"))
    for seed, name in enumerate((MOBILENET, INCEPTION)):
        random_checkpoint(name, store.path_for(MODEL_FILES[name]), seed=seed)
    return store


@pytest.mark.parametrize("name,size", [(MOBILENET, (37, 53)), (MOBILENET, (5, 3)), (MOBILENET, (64, 96)),
                                       (INCEPTION, (45, 61))])
def test_deblurgan_keeps_size_and_is_deterministic(random_gan_store, name, size):
    _, runner = DeblurModels(random_gan_store).get(name)
    rgb = np.random.default_rng(1).random((*size, 3), dtype=np.float32)
    first, second = runner(rgb), runner(rgb)
    assert first.shape == rgb.shape and first.dtype == np.float32
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert np.array_equal(first, second)


def test_deblurgan_pre_and_post_processing(random_gan_store):
    """[-1, 1] in, zero padding to a multiple of 32, (y + 1) / 2 out, cropped: checked against the generator
    called by hand on the padded tensor."""
    _, runner = DeblurModels(random_gan_store).get(MOBILENET)
    rgb = np.random.default_rng(2).random((40, 70, 3), dtype=np.float32)
    padded = np.zeros((64, 96, 3), np.float32)
    padded[:40, :70] = rgb * 2 - 1
    with torch.inference_mode():
        y = runner.model(torch.from_numpy(padded.transpose(2, 0, 1)[None].copy()))[0].numpy()
    expected = np.clip((y.transpose(1, 2, 0)[:40, :70] + 1) / 2, 0, 1)
    np.testing.assert_allclose(runner(rgb), expected, atol=1e-6)


def test_strength_blends_and_zero_is_identity(random_gan_store):
    run = make_deblur(DeblurModels(random_gan_store))
    rgb = np.random.default_rng(3).random((33, 47, 3), dtype=np.float32)
    alpha = np.full((33, 47), 0.5, np.float32)
    picture = Picture(rgb=rgb, alpha=alpha, bit_depth=16)
    full = run(picture, {"model": MOBILENET, "strength": 1.0}, StageContext())
    half = run(picture, {"model": MOBILENET, "strength": 0.5}, StageContext())
    none = run(picture, {"model": MOBILENET, "strength": 0.0}, StageContext())
    assert none.rgb is picture.rgb
    np.testing.assert_allclose(half.rgb, (rgb + full.rgb) / 2, atol=1e-5)
    assert half.alpha is alpha and half.bit_depth == 16
    assert not np.allclose(full.rgb, rgb, atol=1e-3)


def test_grayscale_stays_grayscale(random_gan_store):
    run = make_deblur(DeblurModels(random_gan_store))
    gray = np.random.default_rng(4).random((30, 30, 1), dtype=np.float32).repeat(3, axis=2)
    out = run(Picture(rgb=gray), {"model": MOBILENET, "strength": 1.0}, StageContext())
    assert np.array_equal(out.rgb[:, :, 0], out.rgb[:, :, 1]) and np.array_equal(out.rgb[:, :, 1], out.rgb[:, :, 2])


def test_missing_weights_are_a_clear_503(tmp_path):
    models = DeblurModels(ModelStore(tmp_path))
    assert models.default_name() is None
    assert not any(m["available"] for m in models.status().values())
    with pytest.raises(ModelUnavailable) as info:
        models.get(INCEPTION)
    assert info.value.status == 503 and "python -m services.deblur.fetch deblurgan-v2-inception" in info.value.message
    with pytest.raises(ModelUnavailable):
        models.get(None)


def test_corrupt_cache_file_is_unavailable(tmp_path):
    store = ModelStore(tmp_path)
    store.path_for(MODEL_FILES[MOBILENET]).write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        DeblurModels(store).get(MOBILENET)


def test_offline_fetch_skips_google_drive(tmp_path, capsys):
    from services.deblur.fetch import main
    assert main([MOBILENET, INCEPTION, "--offline", "--cache-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "missing  deblurgan-v2-mobilenet" in out and "no source can provide it here" in out
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ MAXIM-3S

@pytest.fixture(scope="module")
def maxim() -> MaximRunner:
    store = ModelStore()
    if not store.is_available(MODEL_FILES[MAXIM]):
        pytest.fail(f"MAXIM-3S is not provisioned in {store.cache_dir}; run: {MODEL_FILES[MAXIM].fetch_command}")
    _, runner = DeblurModels(store).get(MAXIM)
    return runner


@pytest.fixture(scope="module")
def maxim_fp32(maxim) -> MaximRunner:
    """MAXIM in fp32 from the cached file (the served runner's weights may be bf16: not a reference)."""
    return MaximRunner(load_maxim(ModelStore().path_for(MODEL_FILES[MAXIM]), MAXIM_STATE_DIGEST), "cpu", "fp32")


@pytest.fixture(scope="module")
def reference():
    onnx_path, oracle_path = reference_paths()
    if not (onnx_path.is_file() and oracle_path.is_file()):
        pytest.fail(f"the MAXIM reference oracle is missing from {onnx_path.parent}; run: {BUILD_COMMAND}")
    return onnx_path, oracle_path


def test_maxim_torch_matches_tensorflow(maxim, maxim_fp32, reference):
    """Our PyTorch network vs TensorFlow running the original TF.js graph on crops of the npm fixture:
    fp32 >= 60 dB, the precision the service runs (bf16 on CPUs with native bf16) >= 45 dB."""
    fp32 = maxim_fp32
    with np.load(reference[1]) as oracle:
        assert len(oracle.files) >= 4
        for index in range(len(oracle.files) // 2):
            batch, expected = oracle[f"input{index}"], oracle[f"output{index}"]
            assert np.abs(expected - batch).mean() > 1e-3  # the network really changes the image
            assert psnr(fp32.network(batch), expected) >= 60
            assert psnr(maxim.network(batch), expected) >= 45, maxim.precision


def test_maxim_torch_matches_onnx_reference_on_a_larger_crop(maxim_fp32, reference):
    """A 128 x 192 crop elsewhere in the fixture (more grid cells than the oracle's crops) against ONNX
    Runtime on the TF -> ONNX conversion."""
    with np.load(reference[1]) as oracle:
        source = oracle["input1"][0]  # 128 x 64 crop of the fixture
    crop = np.ascontiguousarray(np.concatenate([source, source[:, ::-1], source], axis=1)[None])  # 128 x 192
    expected = OrtMaxim(reference[0]).network(crop)
    assert psnr(maxim_fp32.network(crop), expected) >= 60


def test_maxim_weights_are_the_recorded_conversion():
    """The cached safetensors holds exactly the tensors provisioning produced (digest recorded in models.py),
    and a tampered file is refused."""
    path = ModelStore().path_for(MODEL_FILES[MAXIM])
    if not path.is_file():
        pytest.fail(f"MAXIM-3S is not provisioned; run: {MODEL_FILES[MAXIM].fetch_command}")
    model = load_maxim(path, MAXIM_STATE_DIGEST)
    assert sum(p.numel() for p in model.parameters()) == 22_207_605
    with pytest.raises(ValueError, match="digest"):
        load_maxim(path, "0" * 64)


def test_weight_mapping_is_strict():
    """Every constant of the TF.js graph that is a parameter lands on exactly one tensor of ours."""
    from services.deblur.arch.maxim import MAXIM3S
    from services.deblur.maxim_weights import to_state_dict
    expected = {k: tuple(v.shape) for k, v in MAXIM3S().state_dict().items()}
    params = {"stage_0_input_conv_0/kernel": np.zeros((3, 3, 3, 32), np.float32)}
    with pytest.raises(KeyError, match="have no weights"):
        to_state_dict(params, expected)
    with pytest.raises(KeyError, match="no parameter"):
        to_state_dict({"stage_9_input_conv_0/kernel": np.zeros((3, 3, 3, 32), np.float32)}, expected)
    with pytest.raises(ValueError, match="shape"):
        to_state_dict({"stage_0_input_conv_0/kernel": np.zeros((3, 3, 3, 16), np.float32)}, expected)


def test_precision_choice(monkeypatch):
    monkeypatch.delenv("DEBLUR_PRECISION", raising=False)
    assert choose_precision("cuda") == "fp16"
    assert choose_precision("cpu") in ("bf16", "fp32")
    monkeypatch.setenv("DEBLUR_PRECISION", "fp32")
    assert choose_precision("cpu") == "fp32"
    monkeypatch.setenv("DEBLUR_PRECISION", "int4")
    with pytest.raises(ConfigurationError):
        choose_precision("cpu")


def test_maxim_odd_size_and_deterministic(maxim):
    rgb = np.random.default_rng(5).random((50, 70, 3), dtype=np.float32)
    first, second = maxim(rgb), maxim(rgb)
    assert first.shape == rgb.shape and np.array_equal(first, second)


@pytest.fixture(scope="module")
def blurred_pair():
    from skimage import data
    sharp = np.ascontiguousarray(data.astronaut()[60:252, 150:342], dtype=np.float32) / 255  # 192 x 192
    return sharp, motion_blur(sharp, 9)


def test_maxim_deblurs_and_tiling_is_seamless(maxim, blurred_pair):
    """3 x 3 windows of 128 px vs one run on the whole 192 x 192 image: nearly the same quality, no seams.
    (MAXIM mixes information across its whole input, so windows this small cost a little: ~0.16 dB here;
    the service's windows are at least 4x larger.)"""
    sharp, blurred = blurred_pair
    untiled = maxim.deblur(blurred)
    small = MaximRunner(maxim.model, maxim.device, maxim.precision, max_window_pixels=128 * 128)
    assert small.plan(192, 192).count == 9
    tiled = small.deblur(blurred)
    p_blur, p_untiled, p_tiled = psnr(blurred, sharp), psnr(untiled, sharp), psnr(tiled, sharp)
    assert p_untiled > p_blur + 3.0, (p_blur, p_untiled)
    assert abs(p_tiled - p_untiled) < 0.25, (p_tiled, p_untiled)
    assert psnr(tiled, untiled) > 40  # no visible seams


def test_large_windows_trim_the_heap_between_blocks(maxim, monkeypatch):
    """A window from TRIM_BETWEEN_BLOCKS_PIXELS on hands free heap pages back between the network's blocks
    (peak RSS at 2 MP: bench/deblur.py); a smaller one only after the window. The output is the same."""
    import services.deblur.maxim_runner as runner_module
    trims = []
    monkeypatch.setattr(runner_module, "release_free_memory", lambda: trims.append(1))
    rgb = np.random.default_rng(3).random((64, 128, 3), dtype=np.float32)
    small = maxim.window(rgb)
    assert len(trims) == 1
    monkeypatch.setattr(runner_module, "TRIM_BETWEEN_BLOCKS_PIXELS", 64 * 128)
    trims.clear()
    large = maxim.window(rgb)
    assert len(trims) > 20
    np.testing.assert_array_equal(small, large)


def test_fused_linear_gelu_is_used_on_cpu_and_equals_the_two_ops():
    """The oneDNN linear + GELU post-op runs on this CPU build (the network's speed depends on it) and
    computes gelu(linear(x)): to float rounding in fp32, to bf16 rounding in bf16."""
    import torch
    import torch.nn.functional as F

    from services.deblur.arch import maxim as arch
    assert arch.FUSED_LINEAR_GELU
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 24, 32, generator=generator)
    weight, bias = torch.randn(64, 32, generator=generator) / 6, torch.randn(64, generator=generator)
    expected = F.gelu(F.linear(x, weight, bias), approximate="tanh")
    torch.testing.assert_close(arch.linear_gelu(x, weight, bias), expected, atol=1e-5, rtol=1e-5)
    fused = arch.linear_gelu(x.bfloat16(), weight.bfloat16(), bias.bfloat16()).float()
    torch.testing.assert_close(fused, expected, atol=0.05, rtol=0.02)
    assert not torch.equal(expected, F.gelu(F.linear(x, weight, bias)))  # the tanh form, as in the graph


def test_encoder_block_frees_the_inputs_it_is_handed():
    """Blocks take their input pieces in a list and empty it once projected (peak memory per window); the
    projection of the pieces equals that of their concatenation."""
    import torch

    from services.deblur.arch.maxim import UNetEncoderBlock
    block = UNetEncoderBlock(16, 8, block=4, grid=4, downsample=False, cross_gating=False).eval()
    generator = torch.Generator().manual_seed(1)
    pieces = [torch.randn(1, 16, 16, 8, generator=generator), torch.randn(1, 16, 16, 8, generator=generator)]
    handed = list(pieces)
    with torch.inference_mode():
        out = block(handed)
        joined = block([torch.cat(pieces, dim=-1)])
    assert handed == []
    torch.testing.assert_close(out, joined, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height,width", [(1224, 1632), (1632, 1224), (1080, 1920), (2000, 3000), (384, 512),
                                          (340, 300), (70, 2000), (5, 3)])
def test_tile_plan(height, width):
    """The fewest windows that fit the budget, 64-multiples inside the photo, every used pixel with its
    context, and within 1.3x of the photo's pixels at the default budget for photos up to 2 MP."""
    plan = plan_tiles(height, width)
    assert plan.ys.window * plan.xs.window <= max(DEFAULT_MAX_WINDOW_PIXELS, 4 * MULTIPLE * MULTIPLE)
    for axis, length in ((plan.ys, height), (plan.xs, width)):
        assert axis.window % MULTIPLE == 0
        assert axis.starts[0] == 0 and (len(axis.starts) == 1 or axis.starts[-1] + axis.window == length)
        total = np.zeros(length)
        for index in range(len(axis.starts)):
            lo, hi, weight = _fade_weights(axis, index)
            total[lo:hi] += weight
            used = np.nonzero(weight)[0] + lo
            if len(axis.starts) > 1:  # used pixels keep CONTEXT pixels of input around them (or the border)
                assert used.min() == 0 or used.min() - lo >= CONTEXT
                assert used.max() == length - 1 or hi - 1 - used.max() >= CONTEXT
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
    if height * width <= 2_100_000 and min(height, width) >= 256:
        assert plan.ratio <= 1.3, plan
    fewer = [(ny, nx) for ny in range(1, 6) for nx in range(1, 6) if ny * nx < plan.count]
    for ny, nx in fewer:  # no plan with fewer windows fits the budget
        from services.deblur.maxim_runner import plan_axis
        ys, xs = plan_axis(height, ny, DEFAULT_MAX_WINDOW_PIXELS), plan_axis(width, nx, DEFAULT_MAX_WINDOW_PIXELS)
        assert ys is None or xs is None or ys.window * xs.window > DEFAULT_MAX_WINDOW_PIXELS


def test_tile_geometry():
    """DeblurGAN-v2 tiles run at a multiple of 32 without padding."""
    for name in (MOBILENET, INCEPTION):
        assert (tiling_for(name, 2000, 2000)["tile"] + 2 * tiling_for(name, 2000, 2000)["context"]) % 32 == 0


# ------------------------------------------------------------------------------------------ HTTP

def png_bytes(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_http_info_and_errors(stack):
    url = stack.url("deblur")
    info = httpx.get(url + "/info").json()
    params = {p["name"]: p for p in info["params"]}
    assert params["model"]["choices"] == [MOBILENET, INCEPTION, MAXIM]
    assert params["strength"]["default"] == 1.0
    assert set(info["models"]) == {MOBILENET, INCEPTION, MAXIM}
    image = png_bytes(np.full((20, 20, 3), 0.5, np.float32))
    bad = httpx.post(url + "/process", files={"image": ("a.png", image)}, data={"params": '{"strength": 2}'})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "strength"
    bad = httpx.post(url + "/process", files={"image": ("a.png", image)}, data={"params": '{"model": "x"}'})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "model"
    missing = [name for name, m in info["models"].items() if not m["available"]]
    if missing:
        reply = httpx.post(url + "/process", files={"image": ("a.png", image)},
                           data={"params": json.dumps({"model": missing[0]})}, timeout=60)
        assert reply.status_code == 503
        assert reply.json()["error"]["fetch_command"] == f"python -m services.deblur.fetch {missing[0]}"


def test_http_maxim_process(stack, maxim, blurred_pair):
    _, blurred = blurred_pair
    crop = blurred[:48, :40]
    url = stack.url("deblur")
    assert httpx.get(url + "/info").json()["models"][MAXIM]["available"]
    reply = httpx.post(url + "/process", files={"image": ("b.png", png_bytes(crop))},
                       data={"params": json.dumps({"model": MAXIM, "mode": "force"})}, timeout=300)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Deblur-Model"] == MAXIM and reply.headers["X-Image-Size"] == "40x48"
    out = np.asarray(Image.open(io.BytesIO(reply.content)).convert("RGB"), dtype=np.float32) / 255
    local = maxim(np.asarray(Image.open(io.BytesIO(png_bytes(crop))), dtype=np.float32) / 255)
    assert np.abs(out - local).max() <= 1 / 255 + 1e-6


def test_maxim_run_stops_when_the_request_is_aborted(maxim):
    """One window of many seconds: the network checks for an abort between its blocks."""
    import threading
    import time

    from shared.contract import Aborted
    ctx = StageContext()
    rgb = np.random.default_rng(6).random((512, 512, 3), dtype=np.float32)  # one run of many seconds
    timer = threading.Timer(0.5, ctx.abort)
    started = time.perf_counter()
    timer.start()
    with pytest.raises(Aborted):
        maxim(rgb, ctx)
    assert time.perf_counter() - started < 5.0
