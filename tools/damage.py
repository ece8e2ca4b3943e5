"""Synthetic print damage with exact masks, for the repair stage's tests and benchmark.

``damage(rgb8, seed)`` draws random defects on a clean uint8 RGB photo and returns the damaged photo and
the boolean mask of every pixel a defect changed:

- curved scratches: smooth random curves, 1-5 px wide, bright (emulsion scraped off) or dark (dirt in the
  groove), painted with a strong but not total opacity that varies along the curve;
- creases: long, almost straight folds: a bright ridge 1-3 px wide with a darker shadow line along one side;
- dust: small irregular specks of 1-4 px radius, dark (dust on the negative) or bright (dust on the print).

Defects are drawn without anti-aliasing, so the mask is exactly the set of changed pixels.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

KINDS = ("scratch", "crease", "dust")


def _smooth_curve(rng: np.random.Generator, height: int, width: int, length: float,
                  bend: float) -> np.ndarray:
    """Points of a random smooth curve of about ``length`` px (int32, N x 2, x-y order)."""
    start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    angle = rng.uniform(0, math.pi)
    steps = max(8, int(length / 3))
    # smoothed random turning: a gently curving path, not a jagged one
    turn = np.convolve(rng.normal(0, bend, steps), np.ones(6) / 6, mode="same").cumsum()
    headings = angle + turn
    deltas = np.stack([np.cos(headings), np.sin(headings)], axis=1) * (length / steps)
    points = start + np.concatenate([[[0, 0]], deltas.cumsum(axis=0)])
    return np.round(points).astype(np.int32)


def _paint(out: np.ndarray, mask: np.ndarray, stroke: np.ndarray, target: float,
           opacity: np.ndarray | float) -> None:
    """Blend ``target`` into ``out`` where ``stroke`` is set, with a per-pixel opacity; record the mask."""
    where = stroke > 0
    alpha = opacity[where][:, None] if isinstance(opacity, np.ndarray) else opacity
    out[where] = out[where] * (1 - alpha) + target * alpha
    mask |= where


def _opacity_field(rng: np.random.Generator, shape: tuple[int, int], low: float, high: float) -> np.ndarray:
    """Opacity varying slowly over the image, so one scratch is not uniform along its length."""
    coarse = rng.uniform(low, high, (max(2, shape[0] // 64), max(2, shape[1] // 64))).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def damage(rgb8: np.ndarray, seed: int, *, scratches: int | None = None, creases: int | None = None,
           dust: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Damaged copy of ``rgb8`` (uint8 H x W x 3) and the exact defect mask (bool H x W)."""
    rng = np.random.default_rng(seed)
    height, width = rgb8.shape[:2]
    diagonal = math.hypot(height, width)
    megapixels = height * width / 1e6
    out = rgb8.astype(np.float32)
    mask = np.zeros((height, width), bool)
    if scratches is None:
        scratches = int(rng.integers(2, 5))
    if creases is None:
        creases = int(rng.integers(0, 2))
    if dust is None:
        dust = int(rng.integers(15, 40) * max(0.5, megapixels * 4))
    for _ in range(scratches):
        points = _smooth_curve(rng, height, width, rng.uniform(0.25, 0.7) * diagonal, bend=0.08)
        stroke = np.zeros((height, width), np.uint8)
        cv2.polylines(stroke, [points], False, 1, thickness=int(rng.integers(1, 6)), lineType=cv2.LINE_8)
        bright = rng.random() < 0.6
        target = rng.uniform(225, 255) if bright else rng.uniform(0, 30)
        _paint(out, mask, stroke, target, _opacity_field(rng, (height, width), 0.6, 0.95))
    for _ in range(creases):
        points = _smooth_curve(rng, height, width, rng.uniform(0.5, 0.9) * diagonal, bend=0.015)
        width_px = int(rng.integers(1, 4))
        ridge = np.zeros((height, width), np.uint8)
        cv2.polylines(ridge, [points], False, 1, thickness=width_px, lineType=cv2.LINE_8)
        shadow = np.zeros((height, width), np.uint8)
        offset = np.array([[1, 1]]) * (width_px // 2 + 1) * (1 if rng.random() < 0.5 else -1)
        cv2.polylines(shadow, [points + offset.astype(np.int32)], False, 1, thickness=max(1, width_px - 1),
                      lineType=cv2.LINE_8)
        shadow &= 1 - ridge
        _paint(out, mask, shadow, rng.uniform(20, 60), _opacity_field(rng, (height, width), 0.4, 0.7))
        _paint(out, mask, ridge, rng.uniform(225, 250), _opacity_field(rng, (height, width), 0.6, 0.9))
    for _ in range(dust):
        speck = np.zeros((height, width), np.uint8)
        radius = rng.uniform(1, 4)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (max(1, int(round(radius * rng.uniform(0.6, 1.4)))), max(1, int(round(radius))))
        cv2.ellipse(speck, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, lineType=cv2.LINE_8)
        bright = rng.random() < 0.4
        target = rng.uniform(225, 255) if bright else rng.uniform(0, 35)
        _paint(out, mask, speck, target, float(rng.uniform(0.7, 1.0)))
    damaged = np.clip(np.round(out), 0, 255).astype(np.uint8)
    # a pixel whose 8-bit value the defect did not actually change is not damage
    mask &= (damaged != rgb8).any(axis=2)
    return damaged, mask
