"""Finishing preview maths on a screen-sized copy (own small numpy/OpenCV code).

The live preview in the page runs the same maths in JavaScript (ui/finishing_component/finish.js, checked
against this module in tests/test_ui_e2e.py); this module makes the screen-sized copy the browser gets and is
the reference for it.

The full-size image is finished by the gateway's ``POST /v1/finish`` on download; this module only has to
look the same at screen size: the same Gaussian blur and thresholded unsharp mask, with the blur sigma and
the sharpening radius scaled by the preview's downscale factor so what you see at "fit" zoom matches the
full-size result viewed at that zoom.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PREVIEW_MAX_SIDE = 1024          # the copy finished live in the page; the "fit" view scales it to the page width
PIXEL_VIEW_SIZE = (1280, 800)    # (width, height) of the part shown at 100 % (about as many pixels)
DEFAULTS = {"blur_sigma": 0.0, "sharpen_amount": 0.0, "sharpen_radius": 1.0, "sharpen_threshold": 0.0}
# Starting points for the sliders (full-size pixels). Upscaled portraits tend to look over-sharpened: a
# little blur smooths skin and grain, and the threshold keeps the gentle sharpening off flat areas.
PRESETS: dict[str, dict[str, float]] = {
    "None": dict(DEFAULTS),
    "Portrait": {"blur_sigma": 0.6, "sharpen_amount": 0.35, "sharpen_radius": 1.5, "sharpen_threshold": 4.0},
    "Landscape": {"blur_sigma": 0.0, "sharpen_amount": 0.8, "sharpen_radius": 1.2, "sharpen_threshold": 1.0},
    "Document / print": {"blur_sigma": 0.0, "sharpen_amount": 1.5, "sharpen_radius": 0.7, "sharpen_threshold": 2.0},
}


@dataclass(frozen=True)
class PreviewBase:
    """A decoded screen-sized copy of an image, made once per result and reused for every slider change."""

    rgb: np.ndarray        # float32 RGB in [0, 1], screen-sized
    scale: float           # preview pixels per full-size pixel (<= 1)
    full_size: tuple[int, int]   # (width, height) of the full image


def decode_rgb8(data: bytes, orient: bool = False) -> np.ndarray:
    """A PNG/JPEG as 8-bit RGB (16-bit reduced, alpha composited over white).

    ``orient=True`` applies the EXIF orientation (for an original upload; the gateway's results are upright).
    """
    flags = cv2.IMREAD_COLOR if orient else cv2.IMREAD_UNCHANGED
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        raise ValueError("not a decodable image")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)
        return cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def fit(rgb8: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> tuple[np.ndarray, float]:
    height, width = rgb8.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb8 = cv2.resize(rgb8, size, interpolation=cv2.INTER_AREA)
    return rgb8, scale


def resize_to(rgb8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb8`` resized to (width, height), e.g. the original to the size of an upscaled result."""
    if (rgb8.shape[1], rgb8.shape[0]) == tuple(size):
        return rgb8
    shrink = size[0] * size[1] < rgb8.shape[0] * rgb8.shape[1]
    return cv2.resize(rgb8, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def make_base(data: bytes, max_side: int = PREVIEW_MAX_SIDE, crop: bool = False,
              centre: tuple[float, float] = (0.5, 0.5)) -> PreviewBase:
    """``crop=False``: the whole image fitted to ``max_side``; ``crop=True``: a part at 100 % around
    ``centre`` (fractions of the width and height)."""
    return make_base_from_rgb8(decode_rgb8(data), max_side, crop, centre)


def crop_box(size: tuple[int, int], centre: tuple[float, float],
             view: tuple[int, int] = PIXEL_VIEW_SIZE) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the 100 % view of an image of ``size`` around ``centre``."""
    box = []
    for full, part, at in zip(size, view, centre):
        part = min(full, part)
        start = round(min(1.0, max(0.0, at)) * full - part / 2)
        box.append((min(max(0, start), full - part), part))
    (left, width), (top, height) = box
    return left, top, width, height


def make_base_from_rgb8(rgb8: np.ndarray, max_side: int = PREVIEW_MAX_SIDE, crop: bool = False,
                        centre: tuple[float, float] = (0.5, 0.5)) -> PreviewBase:
    height, width = rgb8.shape[:2]
    if crop:
        left, top, w, h = crop_box((width, height), centre)
        small, scale = rgb8[top:top + h, left:left + w], 1.0
    else:
        small, scale = fit(rgb8, max_side)
    return PreviewBase(np.ascontiguousarray(small, dtype=np.float32) * np.float32(1 / 255), scale, (width, height))


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def finish(rgb: np.ndarray, blur_sigma: float, sharpen_amount: float, sharpen_radius: float,
           sharpen_threshold: float) -> np.ndarray:
    """Extra blur, then unsharp mask with a soft threshold in 8-bit levels (float32 RGB in [0, 1])."""
    out = rgb
    if blur_sigma > 0:
        out = _blur(out, blur_sigma)
    if sharpen_amount > 0:
        detail = out - _blur(out, sharpen_radius)
        if sharpen_threshold > 0:
            # soft threshold: sign(d) * max(|d| - limit, 0), written as d - clip(d, -limit, limit)
            limit = np.float32(sharpen_threshold / 255.0)
            detail -= np.clip(detail, -limit, limit)
        out = out + np.float32(sharpen_amount) * detail
    return out


def preview(base: PreviewBase, settings: dict[str, float]) -> np.ndarray:
    """The finished screen-sized copy as uint8 RGB; pixel sizes are scaled to the preview."""
    s = {**DEFAULTS, **settings}
    blur = s["blur_sigma"] * base.scale
    radius = max(0.1, s["sharpen_radius"] * base.scale)
    out = finish(base.rgb, blur if blur >= 0.05 else 0.0, s["sharpen_amount"], radius, s["sharpen_threshold"])
    out = np.clip(out, 0.0, 1.0)
    return cv2.convertScaleAbs(out, alpha=255.0)   # rounds and saturates to uint8


def to_jpeg(rgb8: np.ndarray, quality: int = 88) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def preview_jpeg(base: PreviewBase, settings: dict[str, float]) -> bytes:
    """What the UI sends to the browser for one slider change."""
    return to_jpeg(preview(base, settings))
