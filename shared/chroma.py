"""Colour or monochrome: a photo's chroma that its tone curve does not explain (used by colorize and tone).

Pure numpy/OpenCV, no model code.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ChromaDecision:
    """Whether an image already has real colour, from the chroma that its tone curve does not explain."""

    colour: bool
    statistic: float      # 90th percentile of residual chroma (Lab units) after removing the tone's tint
    tint_chroma: float    # chroma of the median tint (sepia / toned prints: several units; gray: ~0)
    threshold: float

    def header(self) -> str:
        return (f"residual_chroma_p90={self.statistic:.2f}; tint_chroma={self.tint_chroma:.2f}; "
                f"threshold={self.threshold:.2f}")


COLOUR_THRESHOLD = 6.0  # Lab units (calibrated on gray, sepia, split-toned, JPEG and colour photos)
ANALYSIS_SIDE = 256
L_BINS = 12


def chroma_decision(rgb: np.ndarray, alpha: np.ndarray | None = None,
                    threshold: float = COLOUR_THRESHOLD) -> ChromaDecision:
    """Pure function: does this picture have real colour (not gray, not a sepia or toned print)?

    A monochrome print may carry a tint that varies with lightness (sepia, selenium, split toning), so
    the tint is estimated per lightness band (median a, b in each of 12 L bands) and removed; what is
    left is chroma that differs between things of the same lightness, which only a colour photo has. The
    statistic is the 90th percentile of that residual chroma on a copy at most 256 px on its longer side
    (transparent pixels ignored); above ``threshold`` the picture counts as colour.
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, ANALYSIS_SIDE / max(height, width))
    small = np.clip(rgb, 0.0, 1.0).astype(np.float32)
    mask = None if alpha is None else alpha > 0.5
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(small, size, interpolation=cv2.INTER_AREA)
        if mask is not None:
            mask = cv2.resize(alpha.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.5
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    if mask is not None and mask.any():
        lab = lab[mask.reshape(-1)]
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    bands = np.minimum((L / (100.0 / L_BINS)).astype(np.int64), L_BINS - 1)
    residual = np.empty_like(L)
    tints = []
    for band in np.unique(bands):
        members = bands == band
        ta, tb = np.median(a[members]), np.median(b[members])
        tints.append((members.sum(), np.hypot(ta, tb)))
        residual[members] = np.hypot(a[members] - ta, b[members] - tb)
    statistic = float(np.percentile(residual, 90)) if residual.size else 0.0
    weights = np.array([w for w, _ in tints], np.float64)
    tint = float(np.average([c for _, c in tints], weights=weights)) if tints else 0.0
    return ChromaDecision(colour=statistic > threshold, statistic=statistic, tint_chroma=tint,
                          threshold=threshold)
