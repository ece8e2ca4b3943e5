"""Denoise stage: quality on synthetic noise, clean photos untouched, precision, alpha, params, HTTP."""
from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from services.denoise.stage import PARAMS, denoise, estimate_noise_sigma, plane_sigmas
from shared.contract import InvalidParams, StageContext, validate_params
from shared.imaging import Picture

from .helpers import decode_rgb, noisy, photo, png_of, psnr


def run(picture: Picture, **params) -> tuple[Picture, StageContext]:
    ctx = StageContext()
    return denoise(picture, validate_params(PARAMS, params), ctx), ctx


def to_pic(rgb8: np.ndarray, alpha=None) -> Picture:
    return Picture(rgb=rgb8.astype(np.float32) / 255, alpha=alpha)


def to8(picture: Picture) -> np.ndarray:
    return np.round(np.clip(picture.rgb, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(photo("astronaut")[96:352, 128:384])   # 256x256: face, suit, flag


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    return np.ascontiguousarray(photo("coffee")[100:292, 150:406])


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_sigma_15_noise_gains_at_least_3_db_with_default_params(name, astronaut, coffee):
    clean = {"astronaut": astronaut, "coffee": coffee}[name]
    dirty = noisy(clean, 15, seed=1)
    out, ctx = run(to_pic(dirty))
    gain = psnr(to8(out), clean) - psnr(dirty, clean)
    assert gain >= 3.0, f"{name}: only {gain:.2f} dB gained"
    assert abs(float(ctx.response_headers["X-Noise-Sigma"]) - 15) < 2.5


def test_high_quality_mode_is_at_least_as_good(astronaut):
    dirty = noisy(astronaut, 15, seed=11)
    standard, _ = run(to_pic(dirty))
    high, _ = run(to_pic(dirty), quality="high")
    assert psnr(to8(high), astronaut) >= psnr(to8(standard), astronaut) - 0.02


def test_light_noise_still_gains(astronaut):
    dirty = noisy(astronaut, 5, seed=2)
    out, _ = run(to_pic(dirty))
    assert psnr(to8(out), astronaut) - psnr(dirty, astronaut) >= 1.5


@pytest.mark.parametrize("sigma", [5, 15, 25])
def test_noise_estimate_tracks_the_true_sigma(sigma, coffee):
    dirty = noisy(coffee, sigma, seed=sigma)
    estimated = plane_sigmas(dirty.astype(np.float32) / 255)
    for plane, value in zip("YUV", estimated):
        assert abs(value - sigma) <= 0.15 * sigma + 0.5, f"{plane}: {value:.2f} for true {sigma}"


def test_texture_is_not_mistaken_for_noise():
    # a clean, fine, high-contrast texture (no flat area at all) must read as (almost) noise-free
    y, x = np.mgrid[0:256, 0:256]
    texture = 128 + 60 * np.sin(x * 0.9) * np.cos(y * 0.7) + 30 * np.sin((x + 2 * y) * 0.35)
    assert estimate_noise_sigma(texture.astype(np.float32)) < 1.5


def test_clean_photo_is_nearly_unchanged(astronaut, coffee):
    for clean in (astronaut, coffee):
        out, _ = run(to_pic(clean))
        assert psnr(to8(out), clean) >= 40


def test_strength_zero_is_identity_and_strength_scales(astronaut):
    dirty = noisy(astronaut, 15, seed=3)
    pic = to_pic(dirty)
    same, _ = run(pic, strength=0.0)
    assert np.array_equal(same.rgb, pic.rgb)
    soft, _ = run(pic, strength=0.5)
    full, _ = run(pic)
    change = lambda p: float(np.abs(p.rgb - pic.rgb).mean())  # noqa: E731
    assert 0 < change(soft) < change(full)


def test_explicit_sigma_overrides_the_estimate(astronaut):
    out, ctx = run(to_pic(astronaut), sigma=12.0)
    assert ctx.response_headers["X-Noise-Sigma"] == "12.00"
    assert psnr(to8(out), astronaut) < 40        # a clean photo forced to 12 levels is smoothed


def test_grayscale_stays_gray_and_is_denoised():
    gray = photo("camera")[128:384, 128:384]
    dirty = noisy(gray, 15, seed=4)
    out, _ = run(to_pic(np.repeat(dirty[:, :, None], 3, axis=2)))
    assert np.array_equal(out.rgb[:, :, 0], out.rgb[:, :, 1]) and np.array_equal(out.rgb[:, :, 1], out.rgb[:, :, 2])
    assert psnr(to8(out)[:, :, 0], gray) - psnr(dirty, gray) >= 3.0


def test_16_bit_precision_is_kept():
    # a smooth 16-bit ramp plus noise: the result must not fall back onto the 8-bit grid
    y, x = np.mgrid[0:160, 0:200].astype(np.float32)
    clean = 0.2 + 0.5 * (x / 200) + 0.1 * np.sin(y / 25)
    rng = np.random.default_rng(5)
    rgb = np.clip(clean[:, :, None] + rng.normal(0, 8 / 255, (160, 200, 3)), 0, 1)
    rgb = (np.round(rgb * 65535) / 65535).astype(np.float32)
    out, _ = run(Picture(rgb=rgb, bit_depth=16))
    assert out.bit_depth == 16 and out.rgb.dtype == np.float32
    levels = out.rgb * 255
    assert np.mean(np.abs(levels - np.round(levels))) > 0.15      # uniform off-grid values: mean 0.25
    error = np.sqrt(np.mean((out.rgb - clean[:, :, None]) ** 2)) * 255
    assert error < 2.0, f"RMS error {error:.2f} levels"


def test_alpha_is_untouched(astronaut):
    alpha = np.linspace(0, 1, astronaut.shape[0] * astronaut.shape[1], dtype=np.float32).reshape(astronaut.shape[:2])
    out, _ = run(to_pic(noisy(astronaut, 15, seed=6), alpha=alpha))
    assert out.alpha is alpha or np.array_equal(out.alpha, alpha)


def test_large_image_is_tiled_seamlessly(monkeypatch):
    # bigger than one tile: the tiled result must match one untiled pass (the filter reaches 14 px,
    # less than the tile context), so there can be no seam
    from services.denoise import stage
    big = np.ascontiguousarray(photo("coffee"))          # 600 x 400 > 512 tile
    dirty = to_pic(noisy(big, 15, seed=7))
    tiled, _ = run(dirty, sigma=15.0)
    monkeypatch.setattr(stage, "TILE", 4096)
    whole, _ = run(dirty, sigma=15.0)
    diff = np.abs(tiled.rgb - whole.rgb) * 255
    assert diff.mean() < 0.05 and diff.max() < 2.0, (diff.mean(), diff.max())
    assert psnr(to8(tiled), big) - psnr(to8(dirty), big) >= 3.0


@pytest.mark.parametrize("params", [{"strength": 5}, {"strength": -1}, {"sigma": "x"}, {"chroma_strength": 9},
                                    {"search_window": 21}, {"quality": "max"}])
def test_invalid_params_rejected(params):
    with pytest.raises(InvalidParams) as info:
        validate_params(PARAMS, params)
    assert info.value.field == next(iter(params))


# --------------------------------------------------------------------------------------------- over HTTP

@pytest.mark.parametrize("params", [{"strength": 5}, {"sigma": -2}, {"bogus": 1}])
def test_http_invalid_params_422(stack, params, astronaut):
    response = httpx.post(stack.url("denoise") + "/process", files={"image": ("a.png", png_of(astronaut[:64, :64]))},
                          data={"params": json.dumps(params)}, timeout=60)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_params" and error["field"] == next(iter(params))
    assert error["stage"] == "denoise"


def test_http_round_trip_denoises_and_keeps_alpha(stack, astronaut):
    dirty = noisy(astronaut, 15, seed=8)
    alpha = np.full(astronaut.shape[:2], 255, np.uint8)
    alpha[:, :40] = 0
    alpha[:40] = 128
    rgba = np.concatenate([dirty, alpha[:, :, None]], axis=2)
    response = httpx.post(stack.url("denoise") + "/process", files={"image": ("n.png", png_of(rgba))}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert abs(float(response.headers["x-noise-sigma"]) - 15) < 2.5
    out = decode_rgb(response.content)
    assert out.shape == rgba.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :, 3], alpha)
    assert psnr(out[:, :, :3], astronaut) - psnr(dirty, astronaut) >= 3.0


def test_http_16_bit_png_stays_16_bit(stack):
    rng = np.random.default_rng(9)
    y, x = np.mgrid[0:96, 0:128]
    base = (20000 + 200 * x + 50 * y)[:, :, None] + rng.normal(0, 2500, (96, 128, 3))
    arr = np.clip(base, 0, 65535).astype(np.uint16)
    response = httpx.post(stack.url("denoise") + "/process", files={"image": ("d.png", png_of(arr))}, timeout=60)
    assert response.status_code == 200, response.text
    out = decode_rgb(response.content)
    assert out.dtype == np.uint16 and out.shape == arr.shape
    assert np.mean(out % 257 != 0) > 0.5          # not just 8-bit values scaled up
    assert math.isfinite(float(response.headers["x-noise-sigma"]))
