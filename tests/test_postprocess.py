"""Postprocess stage: post-denoise blur and unsharp-mask sharpening, alone and together."""
from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest

from services.postprocess.stage import PARAMS, postprocess
from shared.contract import InvalidParams, StageContext, validate_params
from shared.imaging import Picture

from .helpers import decode_rgb, photo, png_of


def run(picture: Picture, **params) -> Picture:
    return postprocess(picture, validate_params(PARAMS, params), StageContext())


def laplacian_energy(rgb: np.ndarray) -> float:
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    return float(np.mean(cv2.Laplacian(gray, cv2.CV_32F) ** 2))


@pytest.fixture(scope="module")
def pic() -> Picture:
    rgb = photo("astronaut")[100:260, 150:330].astype(np.float32) / 255   # 160 x 180, not square
    return Picture(rgb=np.ascontiguousarray(rgb))


def edge_picture() -> Picture:
    rgb = np.full((64, 80, 3), 0.3, np.float32)
    rgb[:, 40:] = 0.7
    return Picture(rgb=rgb)


def test_blur_only_smooths_and_keeps_size(pic):
    out = run(pic, blur_sigma=1.0, sharpen_amount=0.0)
    assert out.rgb.shape == pic.rgb.shape and out.rgb.dtype == np.float32
    assert laplacian_energy(out.rgb) < 0.5 * laplacian_energy(pic.rgb)
    expected = cv2.GaussianBlur(pic.rgb, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    assert np.allclose(out.rgb, expected, atol=1e-6)


def test_sharpen_only_raises_edge_contrast_without_blur():
    edge = edge_picture()
    out = run(edge, blur_sigma=0.0, sharpen_amount=1.0, sharpen_radius=2.0, sharpen_threshold=0.0)
    row = out.rgb[32, :, 0]
    assert row[38] < 0.3 - 0.02 and row[41] > 0.7 + 0.02      # overshoot on both sides: a sharper step
    assert np.allclose(row[:20], 0.3, atol=1e-5) and np.allclose(row[-20:], 0.7, atol=1e-5)


def test_sharpen_only_increases_detail(pic):
    out = run(pic, blur_sigma=0.0, sharpen_amount=1.0, sharpen_threshold=0.0)
    assert out.rgb.shape == pic.rgb.shape
    assert laplacian_energy(out.rgb) > 1.5 * laplacian_energy(pic.rgb)
    assert out.rgb.min() >= 0 and out.rgb.max() <= 1


def test_both_blur_then_sharpen(pic):
    blurred = run(pic, blur_sigma=1.0, sharpen_amount=0.0)
    both = run(pic, blur_sigma=1.0, sharpen_amount=1.0, sharpen_threshold=0.0)
    sharpened_blur = run(blurred, blur_sigma=0.0, sharpen_amount=1.0, sharpen_threshold=0.0)
    assert np.allclose(both.rgb, sharpened_blur.rgb, atol=1e-6)      # the order is blur, then sharpen
    assert laplacian_energy(blurred.rgb) < laplacian_energy(both.rgb)


def test_everything_off_is_identity(pic):
    out = run(pic, blur_sigma=0.0, sharpen_amount=0.0)
    assert np.array_equal(out.rgb, pic.rgb)


def test_threshold_leaves_flat_areas_alone():
    rng = np.random.default_rng(0)
    flat = 0.5 + rng.uniform(-1, 1, (64, 64, 3)).astype(np.float32) / 255     # +-1 level of grain
    flat[:, 32:] += 0.3                                                       # and one real edge
    picture = Picture(rgb=flat)
    out = run(picture, blur_sigma=0.0, sharpen_amount=1.5, sharpen_radius=1.0, sharpen_threshold=3.0)
    assert np.array_equal(out.rgb[:, :24], flat[:, :24])                  # grain is not sharpened
    assert np.array_equal(out.rgb[:, 40:], flat[:, 40:])
    assert not np.allclose(out.rgb[:, 30:34], flat[:, 30:34], atol=1 / 255)   # the edge is
    no_threshold = run(picture, blur_sigma=0.0, sharpen_amount=1.5, sharpen_radius=1.0, sharpen_threshold=0.0)
    assert not np.array_equal(no_threshold.rgb[:, :24], flat[:, :24])


def test_alpha_and_depth_kept(pic):
    alpha = np.linspace(0, 1, pic.pixels, dtype=np.float32).reshape(pic.height, pic.width)
    out = run(pic.replace(alpha=alpha, bit_depth=16))
    assert np.array_equal(out.alpha, alpha) and out.bit_depth == 16


@pytest.mark.parametrize("params", [{"blur_sigma": -1}, {"sharpen_amount": 6}, {"sharpen_radius": 0},
                                    {"sharpen_threshold": 300}, {"unknown": 1}])
def test_invalid_params_rejected(params):
    with pytest.raises(InvalidParams) as info:
        validate_params(PARAMS, params)
    assert info.value.field == next(iter(params))


def test_http_round_trip_and_422(stack):
    rgb = photo("astronaut")[:120, :200]
    url = stack.url("postprocess") + "/process"
    response = httpx.post(url, files={"image": ("p.png", png_of(rgb))},
                          data={"params": json.dumps({"blur_sigma": 0, "sharpen_amount": 1.0})}, timeout=60)
    assert response.status_code == 200, response.text
    out = decode_rgb(response.content)
    assert out.shape == rgb.shape
    assert laplacian_energy(out / 255) > laplacian_energy(rgb / 255)
    bad = httpx.post(url, files={"image": ("p.png", png_of(rgb))}, data={"params": json.dumps({"blur_sigma": 99})},
                     timeout=60)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "blur_sigma"
