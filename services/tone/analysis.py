"""Measuring and correcting faded prints: black/white points, dye-fading cast, contrast (pure numpy/OpenCV).

Dye-fading model (what the correction inverts): a print's reflectance in channel c is ``10 ** -D_c``; as a
dye fades it loses a fraction of its density, ``D_c -> k_c * D_c`` (``k_c <= 1``), so in linear light the
channel becomes ``r ** k_c`` (a per-channel gamma), and the paper stains (a per-channel gain ``paper_c``). The
print's deepest black had reflectance ``R_MIN`` (maximum density about 2); after fading the channel's black
point is ``paper_c * R_MIN ** k_c`` and its white point ``paper_c``. So each channel's robust black and white
points give its gain and its density loss: ``k_c = log(black_c / white_c) / log(R_MIN)``. Errors in the
assumed ``R_MIN`` change every ``k_c`` by the same factor, which changes overall contrast, not colour: neutral
greys stay neutral. The correction per channel is ``((v / paper_c) ** (1 / k_c) - R_MIN) / (1 - R_MIN)`` in
linear light, one table lookup per channel at full size.

A black-and-white print is collapsed to its mean channel (which removes the paper's yellowing) and gets
the same levels and density curve on that one channel. Local contrast (CLAHE on lightness, low clip limit)
is added only where the photo is still flat after that.

Everything is measured on a copy at most ``ANALYSIS_SIDE`` px long, over the visible pixels.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np

from shared.chroma import chroma_decision

ANALYSIS_SIDE = 512
LUT_SIZE = 65536             # one entry per 16-bit code: exact for 8- and 16-bit input
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
R_MIN = 0.01                 # reflectance of an unfaded print's deepest black (density 2.0)
DENSITY_KEPT_LIMITS = (0.35, 1.0)   # k_c: fading only ever removes density; beyond 0.35 nothing is left
# Auto mode's thresholds: a print counts as faded when its blacks are lifted or its whites are dull. Cast:
# a neutral grey of the scene shows this much chroma (CIELAB units) or the paper white does; it decides on
# its own only for black-and-white prints, since a colour scene without white objects looks just the same.
LIFTED_BLACK = 0.08          # mean of the channels' black points, sRGB [0, 1]
DULL_WHITE = 0.70            # brightest channel's white point
CAST_CHROMA = 6.0            # mid-grey's chroma in the photo
PAPER_CHROMA = 8.0           # white point's chroma
# A colour scene without a white object has white points that differ per channel just like stained paper,
# so the per-channel white gains are trusted only partly: each channel's white is taken this far from the
# brightest channel's towards its own (calibrated on bench/tone.py's photos: 1.0 hurts scenes without white,
# 0 leaves the stain).
WHITE_TRUST = 0.6
MIN_RANGE = 0.1              # white minus black (sRGB) below which there is no tonal range to read
LOW_CONTRAST_L_STD = 14.0    # L* standard deviation after levels below which local contrast is added


def srgb_to_linear(v):
    v = np.asarray(v, np.float32)
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92).astype(np.float32)


def linear_to_srgb(v):
    v = np.clip(np.asarray(v, np.float32), 0.0, 1.0)
    return np.where(v > 0.0031308, 1.055 * v ** (1 / 2.4) - 0.055, 12.92 * v).astype(np.float32)


@dataclass
class Measurement:
    monochrome: bool
    black: np.ndarray           # per-channel black points (sRGB, [0, 1])
    white: np.ndarray           # per-channel white points
    paper_white: np.ndarray     # the white each channel is scaled from (see WHITE_TRUST)
    density_kept: np.ndarray    # k_c: fraction of each dye's density left
    cast_lab: tuple[float, float]    # (a, b) of a scene's mid-grey as the photo shows it
    paper_lab: tuple[float, float]   # (a, b) of the white point
    contrast_l_std: float       # L* standard deviation of the photo as it is
    range_l: float              # L* from black point to white point

    @property
    def cast_chroma(self) -> float:
        return float(np.hypot(*self.cast_lab))

    @property
    def paper_chroma(self) -> float:
        return float(np.hypot(*self.paper_lab))

    @property
    def measurable(self) -> bool:
        return bool((self.white - self.black).max() >= MIN_RANGE)

    @property
    def faded(self) -> bool:
        return bool(self.black.mean() > LIFTED_BLACK or self.white.max() < DULL_WHITE)

    @property
    def cast(self) -> bool:
        return bool(self.cast_chroma > CAST_CHROMA or self.paper_chroma > PAPER_CHROMA)

    def as_dict(self) -> dict:
        return {"monochrome": self.monochrome, "measurable": self.measurable, "faded": self.faded, "cast": self.cast,
                "cast_chroma": round(self.cast_chroma, 2),
                "cast_ab": [round(v, 2) for v in self.cast_lab],
                "paper_chroma": round(self.paper_chroma, 2),
                "black": [round(float(v), 3) for v in self.black],
                "white": [round(float(v), 3) for v in self.white],
                "density_kept": [round(float(v), 3) for v in self.density_kept],
                "contrast": {"l_std": round(self.contrast_l_std, 2), "l_range": round(self.range_l, 2)}}


def analysis_copy(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A copy at most ANALYSIS_SIDE px long (clipped to [0, 1]) and its alpha, both small."""
    height, width = rgb.shape[:2]
    scale = min(1.0, ANALYSIS_SIDE / max(height, width))
    small, small_alpha = rgb, alpha
    if scale < 1.0:   # resize first: the full-size image is never copied
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if alpha is not None:
            small_alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
    return np.clip(small, 0.0, 1.0).astype(np.float32, copy=False), small_alpha


def visible_pixels(small: np.ndarray, small_alpha: np.ndarray | None) -> np.ndarray:
    """N x 3 pixels of the analysis copy that are not transparent."""
    pixels = small.reshape(-1, 3)
    if small_alpha is not None:
        mask = small_alpha.reshape(-1) > 0.5
        if mask.any():
            pixels = pixels[mask]
    return pixels


def lab_of(rgb: np.ndarray) -> np.ndarray:
    """CIELAB of sRGB values in [0, 1] (any shape ... x 3)."""
    rgb = np.asarray(rgb, np.float32)
    flat = rgb.reshape(-1, 1, 3)
    return cv2.cvtColor(np.ascontiguousarray(flat), cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def measure(rgb: np.ndarray, alpha: np.ndarray | None = None) -> Measurement:
    return measure_copy(*analysis_copy(rgb, alpha))


def measure_copy(small: np.ndarray, small_alpha: np.ndarray | None) -> Measurement:
    """The measurements, from the analysis copy (``analysis_copy``)."""
    pixels = visible_pixels(small, small_alpha)
    monochrome = not chroma_decision(small, small_alpha).colour
    contrast = float(lab_of(pixels)[:, 0].std())
    if monochrome:
        grey = pixels.mean(axis=1)
        black = np.full(3, np.percentile(grey, LOW_PERCENTILE), np.float32)
        white = np.full(3, np.percentile(grey, HIGH_PERCENTILE), np.float32)
        paper, cast = _tint(pixels, high=True), _tint(pixels, high=False)
    else:
        black = np.percentile(pixels, LOW_PERCENTILE, axis=0).astype(np.float32)
        white = np.percentile(pixels, HIGH_PERCENTILE, axis=0).astype(np.float32)
        paper_lab = lab_of(white)
        paper = (float(paper_lab[1]), float(paper_lab[2]))
    kept = density_kept(black, white)
    paper_white = (white.max() + WHITE_TRUST * (white - white.max())).astype(np.float32)
    if not monochrome:
        mid_lab = lab_of(inverse_curve(np.full(3, 0.5, np.float32), paper_white, kept))
        cast = (float(mid_lab[1]), float(mid_lab[2]))
    return Measurement(monochrome=monochrome, black=black, white=white, paper_white=paper_white,
                       density_kept=kept, cast_lab=cast,
                       paper_lab=paper, contrast_l_std=contrast,
                       range_l=float(lab_of(white)[0] - lab_of(black)[0]))


def _tint(pixels: np.ndarray, high: bool) -> tuple[float, float]:
    """A monochrome print's tint (median a, b) in its highlights (the paper) or its mid-tones."""
    lab = lab_of(pixels)
    L = lab[:, 0]
    lo, hi = np.percentile(L, [75, 99]) if high else np.percentile(L, [30, 70])
    band = lab[(L >= lo) & (L <= hi)]
    if not len(band):
        return 0.0, 0.0
    return float(np.median(band[:, 1])), float(np.median(band[:, 2]))


def density_kept(black: np.ndarray, white: np.ndarray) -> np.ndarray:
    """k_c from each channel's black/white ratio in linear light (see the module's model)."""
    ratio = np.clip(srgb_to_linear(black), 1e-5, None) / np.clip(srgb_to_linear(white), 1e-3, None)
    kept = np.log(np.clip(ratio, 1e-5, 0.999)) / np.log(R_MIN)
    return np.clip(kept, *DENSITY_KEPT_LIMITS).astype(np.float32)


def curve(values: np.ndarray, white: float, kept: float) -> np.ndarray:
    """Faded sRGB values -> restored sRGB values for one channel."""
    reflectance = np.clip(srgb_to_linear(values) / max(float(srgb_to_linear(white)), 1e-3), 0.0, 1.0)
    original = (reflectance ** (1.0 / kept) - R_MIN) / (1.0 - R_MIN)
    return linear_to_srgb(original)


def inverse_curve(values: np.ndarray, white: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Restored sRGB -> the faded sRGB values that the photo shows (per channel)."""
    original = srgb_to_linear(values)
    reflectance = (R_MIN + (1.0 - R_MIN) * original) ** kept
    return linear_to_srgb(reflectance * srgb_to_linear(white))


def correction_luts(m: Measurement, strength: float, cast: bool) -> np.ndarray:
    """3 x LUT_SIZE tables: the corrected value of each input code, blended with identity by ``strength``.

    Without cast correction the three channels share the least-faded channel's curve, so the balance
    between them is kept.
    """
    codes = np.linspace(0.0, 1.0, LUT_SIZE, dtype=np.float32)
    if cast or m.monochrome:
        white, kept = m.paper_white, m.density_kept
    else:  # the least-faded channel's curve for all three
        densest = int(np.argmax(m.density_kept))
        white, kept = np.full(3, m.paper_white[densest]), np.full(3, m.density_kept[densest])
    luts = np.stack([curve(codes, white[c], kept[c]) for c in range(3)])
    return ((1.0 - strength) * codes + strength * luts).astype(np.float32)


def apply_luts(rgb: np.ndarray, luts: np.ndarray, to_grey: bool) -> np.ndarray:
    """Full-size correction: one lookup per channel at the nearest 16-bit code (``to_grey``: a black-and-white
    print is collapsed to its mean channel first, so the paper's tint goes)."""
    out = np.empty(rgb.shape, dtype=np.float32)
    sources = [rgb.mean(axis=2, dtype=np.float32)] * 3 if to_grey else [rgb[:, :, c] for c in range(3)]
    for c in range(3):
        scaled = sources[c] * np.float32(LUT_SIZE - 1)
        scaled += np.float32(0.5)
        np.clip(scaled, 0.0, np.float32(LUT_SIZE - 1), out=scaled)
        np.take(luts[c], scaled.astype(np.uint16), out=out[:, :, c])
    return out


def local_contrast(rgb: np.ndarray, amount: float, grey: bool) -> np.ndarray:
    """CLAHE on lightness with a low clip limit, blended by ``amount``; colour (a, b) is kept (``grey``: the
    three channels are equal and stay so)."""
    clahe = cv2.createCLAHE(clipLimit=1.0 + 1.5 * amount, tileGridSize=(8, 8))
    if grey:
        plane = rgb[:, :, 0]
        codes = (np.clip(plane, 0, 1) * 65535 + 0.5).astype(np.uint16)
        boosted = clahe.apply(codes).astype(np.float32) / 65535
        plane = plane + amount * (boosted - plane)
        return np.repeat(plane[:, :, None], 3, axis=2)
    lab = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2Lab)
    L = lab[:, :, 0]
    codes = (np.clip(L / 100.0, 0, 1) * 65535 + 0.5).astype(np.uint16)
    boosted = clahe.apply(codes).astype(np.float32) * np.float32(100.0 / 65535)
    lab[:, :, 0] = L + amount * (boosted - L)
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)


def decision_header(m: Measurement, decision: str, applied: dict) -> str:
    return json.dumps({"decision": decision, **m.as_dict(), "applied": applied}, separators=(",", ":"))
