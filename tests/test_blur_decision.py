"""Deblur's auto mode: blur measurement and decision, deconvolution of defocus, headers over HTTP."""
from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest

from bench.deblur import motion_kernel
from services.deblur.blur_estimate import DEFOCUS, MOTION, SHARP, estimate_blur
from services.deblur.deconvolve import deconvolve_gaussian
from shared.imaging import decode_image, encode_png, Picture

from .helpers import photo


def crop(name: str = "astronaut", size: int = 256) -> np.ndarray:
    rgb = photo(name).astype(np.float32) / 255
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    h, w = rgb.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(rgb[y:y + size, x:x + size])


def quantise(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.float32) / 255


def motion(rgb: np.ndarray, length: int = 15, angle: float = 30) -> np.ndarray:
    return quantise(cv2.filter2D(rgb, -1, motion_kernel(length, angle), borderType=cv2.BORDER_REFLECT))


def defocus(rgb: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    return quantise(cv2.GaussianBlur(rgb, (0, 0), sigma, borderType=cv2.BORDER_REFLECT))


def psnr(a: np.ndarray, b: np.ndarray, margin: int = 12) -> float:
    a, b = a[margin:-margin, margin:-margin], b[margin:-margin, margin:-margin]
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_decision_on_synthetic_blur(name):
    sharp = crop(name)
    assert estimate_blur(sharp).kind == SHARP
    assert estimate_blur(motion(sharp, 15, 30)).kind == MOTION
    assert estimate_blur(motion(sharp, 21, 100)).kind == MOTION
    assert estimate_blur(defocus(sharp, 2.0)).kind == DEFOCUS
    wider = estimate_blur(defocus(sharp, 3.0))
    assert wider.defocus_sigma > estimate_blur(defocus(sharp, 1.5)).defocus_sigma > 0.5


def test_flat_and_tiny_images_count_as_sharp():
    assert estimate_blur(np.full((64, 64, 3), 0.4, np.float32)).kind == SHARP
    assert estimate_blur(np.zeros((8, 8, 3), np.float32)).kind == SHARP


def test_transparent_border_is_not_a_photo_edge():
    """A blurred photo pasted on a transparent canvas: the hard alpha cut-out must not read as sharp edges."""
    blurred = defocus(crop("coffee"), 2.5)
    canvas = np.ones((320, 320, 3), np.float32)
    canvas[32:288, 32:288] = blurred
    alpha = np.zeros((320, 320), np.float32)
    alpha[32:288, 32:288] = 1
    assert estimate_blur(canvas, alpha).kind == DEFOCUS


def test_motion_strength_follows_the_measured_blur():
    sharp = crop("astronaut")
    slight, strong = estimate_blur(motion(sharp, 5, 0)), estimate_blur(motion(sharp, 21, 0))
    assert strong.kind == MOTION and strong.strength == 1.0
    assert slight.width_max < strong.width_max and 0 <= slight.strength <= strong.strength


def test_deconvolution_restores_defocus_and_keeps_shape():
    sharp = crop("astronaut")
    blurred = defocus(sharp, 2.0)
    restored = deconvolve_gaussian(blurred, 2.0, 3e-4)
    assert restored.shape == blurred.shape and restored.dtype == np.float32
    assert psnr(restored, sharp) > psnr(blurred, sharp) + 1.5
    assert deconvolve_gaussian(blurred, 0.0) is blurred
    odd = deconvolve_gaussian(blurred[:37, :53], 1.0)
    assert odd.shape == (37, 53, 3)


# ------------------------------------------------------------------------------------------ HTTP

def post_deblur(stack, rgb: np.ndarray, params: dict | None = None, timeout: float = 600) -> httpx.Response:
    return httpx.post(stack.url("deblur") + "/process", files={"image": ("p.png", encode_png(Picture(rgb=rgb)))},
                      data={"params": json.dumps(params or {})}, timeout=timeout)


def test_http_sharp_photo_comes_back_unchanged(stack):
    sharp = crop("coffee")
    reply = post_deblur(stack, sharp)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Deblur-Decision"] == SHARP
    blur = json.loads(reply.headers["X-Deblur-Blur"])
    assert blur["kind"] == SHARP and blur["width_max"] < 1.0 and blur["edges"] > 0
    assert "X-Deblur-Model" not in reply.headers  # the network never ran
    assert np.array_equal(decode_image(reply.content).rgb, decode_image(encode_png(Picture(rgb=sharp))).rgb)


def test_http_defocus_is_deconvolved(stack):
    sharp = crop("astronaut")
    blurred = defocus(sharp, 2.0)
    reply = post_deblur(stack, blurred)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Deblur-Decision"] == DEFOCUS
    assert reply.headers["X-Deblur-Method"] == "wiener-gaussian"
    assert 1.2 < json.loads(reply.headers["X-Deblur-Blur"])["defocus_sigma"] < 2.8
    assert psnr(decode_image(reply.content).rgb, sharp) > psnr(blurred, sharp) + 1.5


def test_http_motion_goes_to_the_network_and_force_always_does(stack):
    sharp = crop("astronaut", 128)
    blurred = motion(sharp, 11, 0)
    available = any(m["available"] for m in httpx.get(stack.url("deblur") + "/health").json()["models"].values())
    for rgb, params in ((blurred, {}), (sharp, {"mode": "force"})):
        reply = post_deblur(stack, rgb, params)
        if params:
            assert "X-Deblur-Decision" not in reply.headers
        else:
            assert reply.headers["X-Deblur-Decision"] == MOTION, reply.headers.get("X-Deblur-Blur")
        if not available:
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "model_unavailable"
            continue
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Deblur-Model"]
        assert not np.array_equal(decode_image(reply.content).rgb, rgb)


def test_gateway_simple_mode_reports_the_deblur_decision(stack):
    response = httpx.post(stack.url("gateway") + "/v1/restore", data={"colorize": "off", "upscale": "none"},
                          files={"image": ("p.png", encode_png(Picture(rgb=crop("coffee"))))}, timeout=600)
    assert response.status_code == 200, response.text
    assert response.headers["X-Deblur-Decision"] == SHARP
    assert json.loads(response.headers["X-Deblur-Blur"])["kind"] == SHARP
    assert "deblur" in response.headers["X-Stages-Run"].split(",")


def test_decide_endpoints_say_what_deblur_will_do_without_doing_it(stack):
    """The stage's POST /decide and the gateway's /v1/decisions (the UI prices a run with them) give the
    decision /process then takes, and /info's throughput records it apart."""
    sharp = quantise(crop())
    blurred = quantise(motion(sharp, 15, 30))
    deblur = stack.url("deblur")
    assert httpx.get(deblur + "/info", timeout=30).json()["decides"] is True
    for rgb, expected in ((sharp, SHARP), (blurred, MOTION)):
        png = encode_png(Picture(rgb=rgb))
        answer = httpx.post(deblur + "/decide", files={"image": ("p.png", png)},
                            data={"params": json.dumps({"mode": "auto"})}, timeout=60)
        assert answer.status_code == 200 and answer.json() == {"stage": "deblur", "decision": expected}
        through_gateway = httpx.post(stack.url("gateway") + "/v1/decisions", files={"image": ("p.png", png)},
                                     data={"mode": "simple", "upscale": "none"}, timeout=60)
        assert through_gateway.status_code == 200, through_gateway.text
        assert through_gateway.json()["decisions"] == {"deblur": expected}
    forced = httpx.post(deblur + "/decide", files={"image": ("p.png", encode_png(Picture(rgb=sharp)))},
                        data={"params": json.dumps({"mode": "force"})}, timeout=60)
    assert forced.json()["decision"] == "force"
    # /process records its request under the decision it took
    assert post_deblur(stack, sharp, {"mode": "auto"}).headers["X-Deblur-Decision"] == SHARP
    assert post_deblur(stack, sharp, {"mode": "auto"}).status_code == 200
    record = httpx.get(deblur + "/info", timeout=30).json()["throughput"]["by_decision"]
    assert record[SHARP]["samples"] >= 1
    # bad input: 4xx JSON naming the problem, from both
    bad = httpx.post(deblur + "/decide", files={"image": ("p.png", b"not an image")}, timeout=30)
    assert 400 <= bad.status_code < 500 and bad.json()["error"]["code"]
    bad = httpx.post(stack.url("gateway") + "/v1/decisions", files={"image": ("p.png", b"\x89PNG\r\n\x1a\nbroken")},
                     timeout=30)
    assert 400 <= bad.status_code < 500 and bad.json()["error"]["code"]
    bad = httpx.post(stack.url("gateway") + "/v1/decisions", data={"mode": "simple", "upscale": "x99"},
                     files={"image": ("p.png", encode_png(Picture(rgb=sharp)))}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "upscale"
