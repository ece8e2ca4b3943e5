"""Colour-space work of the colorize stage, at full resolution and fast (no model code here).

CIE Lab uses the same constants as scikit-image (sRGB primaries, D65 2-degree white), which the reference
pipeline (``colorizers.util``) uses, so the network sees the same L and the output matches its
``postprocess_tens`` where no colour is out of gamut.

Speed: the full-resolution work is elementwise float32 on planes; sRGB decoding is a table lookup, the 3x3
matrix is applied plane by plane, gamut mapping touches only out-of-gamut pixels, and the ab upsampling
and sRGB encoding use OpenCV (multi-threaded).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# the auto-mode decision lives in shared/ because the tone stage must tell black-and-white prints too
from shared.chroma import ChromaDecision, chroma_decision  # noqa: F401  (re-exported)

# scikit-image's sRGB -> XYZ matrix and D65 (2 degree) white point
XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
WHITE = (0.95047, 1.0, 1.08883)
LUMA = XYZ_FROM_RGB[1]  # Y row; sums to 1, so a gray's luminance is its linear value
EPSILON, KAPPA = 0.008856, 7.787  # f(t) = cbrt(t) above EPSILON, KAPPA * t + 16/116 below
F_THRESHOLD = 0.2068966          # the same split on the f side (inverse)
LUT_SIZE = 65536


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def _lab_f(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, np.float64)
    return np.where(t > EPSILON, np.cbrt(t), KAPPA * t + 16.0 / 116.0)


# Linear value of every 16-bit code (8-bit codes k are 16-bit codes 257 k, so 8-bit input is exact).
_LINEAR_LUT = _srgb_decode(np.arange(LUT_SIZE) / (LUT_SIZE - 1)).astype(np.float32)
_F_OF_GRAY_LUT = _lab_f(_LINEAR_LUT.astype(np.float64)).astype(np.float32)


def _codes(plane: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> nearest 16-bit codes (uint16)."""
    scaled = plane * np.float32(LUT_SIZE - 1)
    scaled += np.float32(0.5)
    np.clip(scaled, np.float32(0.0), np.float32(LUT_SIZE - 1), out=scaled)
    return scaled.astype(np.uint16)  # truncation of x + 0.5: rounding


@dataclass
class Lightness:
    """The input's luminance Y (linear, [0, 1]) and f(Y); L = 116 f(Y) - 16."""

    y: np.ndarray
    fy: np.ndarray

    @property
    def L(self) -> np.ndarray:
        return self.fy * np.float32(116.0) - np.float32(16.0)


def lightness(rgb: np.ndarray, gray: bool | None = None) -> Lightness:
    """Y and f(Y) of an H x W x 3 float32 sRGB image; a gray image needs one lookup per pixel."""
    if gray is None:
        gray = is_gray(rgb)
    if gray:
        codes = _codes(rgb[:, :, 1])
        return Lightness(np.take(_LINEAR_LUT, codes), np.take(_F_OF_GRAY_LUT, codes))
    y = None
    for channel, weight in enumerate(LUMA):
        term = np.take(_LINEAR_LUT, _codes(rgb[:, :, channel]))
        term *= np.float32(weight)
        y = term if y is None else np.add(y, term, out=y)
    np.clip(y, 0.0, 1.0, out=y)
    fy = np.cbrt(y)
    _patch(fy, y <= np.float32(EPSILON), lambda: y * np.float32(KAPPA) + np.float32(16.0 / 116.0))
    return Lightness(y, fy)


def _patch(values: np.ndarray, mask: np.ndarray, other) -> None:
    """values[mask] = other()[mask], skipping the work when no pixel needs it (the usual case)."""
    if mask.any():
        np.copyto(values, other(), where=mask)


def is_gray(rgb: np.ndarray) -> bool:
    r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    return bool(np.array_equal(r, g) and np.array_equal(g, b))


def network_lightness(rgb: np.ndarray, size: tuple[int, int], bit_depth: int = 8,
                      gray: bool | None = None) -> np.ndarray:
    """L of the image resized to ``size`` (height, width) as the reference does it: the sRGB image is
    resized with Pillow's bicubic filter (on 8-bit codes for 8-bit input, in float for 16-bit input),
    then converted to L. float32, height x width."""
    if gray is None:
        gray = is_gray(rgb)
    height, width = size
    channels = [1] if gray else [0, 1, 2]
    resized = []
    for channel in channels:
        plane = np.ascontiguousarray(rgb[:, :, channel])
        if bit_depth == 8:
            codes = np.clip(plane * 255.0 + 0.5, 0, 255).astype(np.uint8)
            small = np.asarray(Image.fromarray(codes, "L").resize((width, height), Image.BICUBIC))
            resized.append(small.astype(np.float32) / np.float32(255.0))
        else:
            small = Image.fromarray(plane.astype(np.float32), "F").resize((width, height), Image.BICUBIC)
            resized.append(np.asarray(small, dtype=np.float32))
    small_rgb = np.stack(resized * 3 if gray else resized, axis=2)
    return lightness(small_rgb, gray=gray).L


def upsample_ab(ab: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """2 x h x w ab -> two full-size planes, bilinear with half-pixel centres (torch align_corners=False)."""
    planes = []
    for plane in ab:
        plane = np.ascontiguousarray(plane, dtype=np.float32)
        if plane.shape != (height, width):
            plane = cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)
        planes.append(plane)
    return planes[0], planes[1]


def _f_inverse(f: np.ndarray) -> np.ndarray:
    cube = f * f
    cube *= f
    _patch(cube, f <= np.float32(F_THRESHOLD), lambda: (f - np.float32(16.0 / 116.0)) * np.float32(1.0 / KAPPA))
    return cube


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    """[0, 1] float32 linear -> sRGB."""
    # pow is slow on zeros and tiny values, which take the linear branch anyway
    curve = np.power(np.maximum(linear, np.float32(0.0031308)), np.float32(1.0 / 2.4))
    curve *= np.float32(1.055)
    curve -= np.float32(0.055)
    _patch(curve, linear <= np.float32(0.0031308), lambda: linear * np.float32(12.92))
    return curve


def lab_to_rgb(light: Lightness, a: np.ndarray, b: np.ndarray, saturation: float = 1.0,
               keep_lightness: bool = True) -> np.ndarray:
    """sRGB (H x W x 3 float32 in [0, 1]) of the input's lightness with the given ab.

    ``keep_lightness``: an out-of-gamut colour is desaturated towards the gray of the same luminance (in
    linear RGB, so Y and hence L stay exactly the input's) instead of having its channels clipped (the
    reference's behaviour, which changes L; used with ``keep_lightness=False``).
    """
    fy, y = light.fy, light.y
    fx = a * np.float32(saturation / 500.0)
    fx += fy
    fz = b * np.float32(-saturation / 200.0)
    fz += fy
    np.maximum(fz, np.float32(0.0), out=fz)  # as scikit-image: negative Z is clipped
    x = _f_inverse(fx)
    x *= np.float32(WHITE[0])
    z = _f_inverse(fz)
    z *= np.float32(WHITE[2])
    yy = y if keep_lightness else _f_inverse(fy)
    channels = []
    for row in RGB_FROM_XYZ:
        c = x * np.float32(row[0])
        c += yy * np.float32(row[1])
        c += z * np.float32(row[2])
        channels.append(c)
    if keep_lightness:
        _desaturate_into_gamut(channels, y)
    encoded = []
    for c in channels:
        np.clip(c, np.float32(0.0), np.float32(1.0), out=c)
        encoded.append(_srgb_encode(c))
    return cv2.merge(encoded)


def _desaturate_into_gamut(channels: list[np.ndarray], y: np.ndarray) -> None:
    """In place: c = Y + t (c - Y) with the largest t <= 1 that brings every channel into [0, 1]."""
    r, g, b = channels
    high = np.maximum(np.maximum(r, g), b)
    low = np.minimum(np.minimum(r, g), b)
    one = np.float32(1.0)
    if high.max(initial=0.0) <= one and low.min(initial=0.0) >= 0.0:
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        t_high = np.where(high > one, (one - y) / (high - y), one)
        t_low = np.where(low < 0.0, y / (y - low), one)
    t = np.minimum(t_high, t_low)
    np.nan_to_num(t, copy=False, nan=0.0)
    np.clip(t, np.float32(0.0), one, out=t)
    for c in channels:
        c -= y
        c *= t
        c += y


STRIP_PIXELS = 1 << 15  # work in row strips whose temporaries stay in the CPU cache


def _threads() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(_threads(), thread_name_prefix="colorize-strips")
        return _POOL


def colorize_full_size(rgb: np.ndarray, a: np.ndarray, b: np.ndarray, saturation: float = 1.0,
                       keep_lightness: bool = True, gray: bool | None = None) -> np.ndarray:
    """The input's lightness joined with full-size ab: ``lab_to_rgb(lightness(rgb), a, b)`` computed in
    row strips on a few threads (numpy releases the GIL), so no full-size temporaries are made."""
    if gray is None:
        gray = is_gray(rgb)
    height, width = rgb.shape[:2]
    out = np.empty((height, width, 3), np.float32)
    rows = max(1, STRIP_PIXELS // max(width, 1))

    def strip(top: int) -> None:
        sl = slice(top, min(height, top + rows))
        light = lightness(rgb[sl], gray=gray)
        out[sl] = lab_to_rgb(light, a[sl], b[sl], saturation, keep_lightness)

    starts = range(0, height, rows)
    if len(starts) == 1:
        strip(0)
    else:
        list(_pool().map(strip, starts))
    return out

