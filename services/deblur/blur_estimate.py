"""How blurred a photo is, and how: sharp, motion (directional) or defocus (isotropic). Pure numpy/OpenCV.

Method (re-blur gradient ratio, after Zhuo & Sim, "Defocus map estimation from a single image", 2011,
made per edge orientation): at an edge blurred by a Gaussian of width s, the gradient peak falls by
sqrt(s^2 + r^2) / s when the image is blurred again by a known Gaussian r, so s = r / sqrt(R^2 - 1) with R
the ratio of the two gradient magnitudes. It is measured on edge pixels (Canny) only, where it holds, and
the median is taken per gradient orientation: a defocused photo blurs edges of every orientation alike; a
motion-blurred one blurs edges across the motion and leaves edges along it sharp. Sharp photos give small
widths in every orientation. Measured on luminance at full resolution (a few OpenCV passes over
the photo); transparent regions (alpha) are ignored, their borders are not photo edges.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

SHARP, MOTION, DEFOCUS = "sharp", "motion", "defocus"

REBLUR_SIGMA = 1.5          # the known re-blur r; large enough for wide blurs to still change the ratio
ORIENTATION_BINS = 6        # 30-degree bins of edge-normal orientation
MIN_EDGES_PER_BIN = 25      # fewer edge pixels than this in a bin: its median is not trusted
MIN_EDGES = 150             # fewer edge pixels in the whole photo: too little structure to judge, "sharp"
WIDTH_CAP = 12.0            # widths beyond this are noise in the ratio (R very near 1)

# Decision thresholds (edge widths in pixels, as the estimator measures them), calibrated on the labelled
# set of bench/blur_decision.py (sharp photos, motion 5-25 px, Gaussian defocus 0.8-3, JPEG q60 of each).
SHARP_MAX_WIDTH = 1.0       # widest orientation below this: sharp
MOTION_ANISOTROPY = 1.5     # widest / narrowest orientation (floored, below) at or above this: motion
ANISOTROPY_FLOOR = 0.5      # narrow widths below this are all "sharp": their ratios are noise
# With few edge pixels (a small or plain photo) each orientation's median is noisier and the widest of them
# biased upwards, so both thresholds ask for stronger evidence.
FEW_EDGES = 1500
SHARP_MAX_WIDTH_FEW_EDGES = 1.1
MOTION_ANISOTROPY_FEW_EDGES = 1.7
# Measured widths include the photo's own edge width: defocus sigma = sqrt(width^2 - intrinsic^2).
INTRINSIC_WIDTH = 0.7
# Motion strength ramps from STRENGTH_AT_THRESHOLD at the sharp threshold to 1 this much wider: near the
# threshold the decision is least certain, so the network's result is only blended in part.
STRENGTH_RAMP_WIDTH = 0.3
STRENGTH_AT_THRESHOLD = 0.5
# JPEG blockiness (mean step across the strongest 8-px grid phase / median phase) above which the
# deconvolution needs its strongest regularisation; at or below BLOCKINESS_CLEAN, the weakest.
BLOCKINESS_CLEAN, BLOCKINESS_BLOCKY = 1.08, 1.15


@dataclass(frozen=True)
class BlurEstimate:
    kind: str                  # SHARP, MOTION or DEFOCUS
    width: float               # median edge width over all orientations (px, Gaussian-equivalent)
    width_max: float           # widest orientation's median
    width_min: float           # narrowest orientation's median
    anisotropy: float          # width_max / max(width_min, ANISOTROPY_FLOOR)
    angle: float               # edge-normal orientation of the widest blur, degrees in [0, 180)
    strength: float            # for MOTION: the network's blend strength; else 0
    defocus_sigma: float       # for DEFOCUS: the Gaussian PSF sigma (px) to deconvolve with; else 0
    blockiness: float          # JPEG 8x8 grid strength (1 = none; measured for DEFOCUS only)
    edges: int                 # edge pixels measured
    reason: str

    def header(self) -> str:
        values = asdict(self)
        return json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in values.items()},
                          separators=(",", ":"))


def luminance(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2GRAY)


def _gradient_magnitude(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return gx, gy, cv2.magnitude(gx, gy)


def edge_widths(rgb: np.ndarray, alpha: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per edge pixel: Gaussian-equivalent blur width (px) and edge-normal orientation (radians, [0, pi))."""
    y = luminance(rgb)
    gx, gy, magnitude = _gradient_magnitude(y)
    _, _, reblurred = _gradient_magnitude(cv2.GaussianBlur(y, (0, 0), REBLUR_SIGMA))
    # Canny on 8 bits with thresholds relative to the photo's own gradients, so a soft photo still has edges
    # (the percentile from every third row and column: the same statistic at a ninth of the cost).
    strong = float(np.percentile(magnitude[::3, ::3], 90)) * 255
    high = max(strong, 8 * 8.0)   # Sobel scale (x8) on 8-bit levels: at least an 8-level step
    edges = cv2.Canny(cv2.convertScaleAbs(y, alpha=255.0), high * 0.5, high, L2gradient=True)
    if alpha is not None:
        opaque = cv2.erode((alpha > 0.98).astype(np.uint8), np.ones((7, 7), np.uint8))
        edges &= opaque * np.uint8(255)
    # Borders: the Sobel and re-blur see reflected pixels there.
    margin = int(3 * REBLUR_SIGMA) + 2
    edges[:margin], edges[-margin:], edges[:, :margin], edges[:, -margin:] = 0, 0, 0, 0
    index = np.flatnonzero(edges)
    ratio = magnitude.ravel()[index] / np.maximum(reblurred.ravel()[index], 1e-6)
    valid = ratio > 1.0 + 1e-3
    ratio, index = ratio[valid], index[valid]
    widths = np.minimum(REBLUR_SIGMA / np.sqrt(ratio * ratio - 1.0), WIDTH_CAP)
    orientation = np.mod(np.arctan2(gy.ravel()[index], gx.ravel()[index]), np.pi)
    return widths.astype(np.float32), orientation.astype(np.float32)


def blockiness(luma: np.ndarray) -> float:
    """How strongly an 8-px JPEG grid shows: per axis, the mean step across the strongest of the 8 column
    (row) phases over the median phase; the smaller of the two axes (1 = no grid)."""
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(luma, axis=axis)).mean(axis=1 - axis)
        usable = steps.size // 8 * 8
        if usable < 16:
            return 1.0
        phases = steps[:usable].reshape(-1, 8).mean(axis=0)
        ratios.append(float(phases.max() / max(float(np.median(phases)), 1e-6)))
    return min(ratios)


def estimate_blur(rgb: np.ndarray, alpha: np.ndarray | None = None) -> BlurEstimate:
    widths, orientation = edge_widths(rgb, alpha)
    if widths.size < MIN_EDGES:
        return BlurEstimate(SHARP, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, int(widths.size),
                            f"only {widths.size} edge pixels: too little structure to measure blur")
    bins = np.minimum((orientation / np.pi * ORIENTATION_BINS).astype(int), ORIENTATION_BINS - 1)
    medians = np.full(ORIENTATION_BINS, np.nan)
    for index in range(ORIENTATION_BINS):
        members = widths[bins == index]
        if members.size >= MIN_EDGES_PER_BIN:
            medians[index] = float(np.median(members))
    trusted = np.flatnonzero(~np.isnan(medians))
    overall = float(np.median(widths))
    if trusted.size < 2:
        width_max = width_min = overall
        angle = 0.0
    else:
        widest = trusted[np.argmax(medians[trusted])]
        width_max, width_min = float(medians[widest]), float(np.min(medians[trusted]))
        angle = (widest + 0.5) * 180.0 / ORIENTATION_BINS
    anisotropy = width_max / max(width_min, ANISOTROPY_FLOOR)
    strength = sigma = 0.0
    grid = 1.0  # measured only where it is used: the deconvolution's regularisation
    few = widths.size < FEW_EDGES
    if width_max < (SHARP_MAX_WIDTH_FEW_EDGES if few else SHARP_MAX_WIDTH):
        kind, reason = SHARP, f"edges are sharp in every orientation (widest {width_max:.2f} px)"
    elif anisotropy >= (MOTION_ANISOTROPY_FEW_EDGES if few else MOTION_ANISOTROPY):
        kind, reason = MOTION, f"edges blurred {anisotropy:.1f}x more across one direction than along it"
        ramp = min((width_max - SHARP_MAX_WIDTH) / STRENGTH_RAMP_WIDTH, 1.0)
        strength = STRENGTH_AT_THRESHOLD + (1 - STRENGTH_AT_THRESHOLD) * ramp
    else:
        kind, reason = DEFOCUS, f"edges blurred alike in every orientation ({width_min:.2f}-{width_max:.2f} px)"
        # From the median over all orientations, not the widest: nearly as good on true defocus, and far
        # less ringing when a motion blur was taken for defocus.
        sigma = defocus_sigma_from_width(overall)
        grid = blockiness(luminance(rgb))
    return BlurEstimate(kind, overall, width_max, width_min, anisotropy, angle, strength, sigma, grid,
                        int(widths.size), reason)


def defocus_sigma_from_width(width: float) -> float:
    """Gaussian PSF sigma of a defocus whose edges measure ``width`` (the photo's own width removed)."""
    return math.sqrt(max(width ** 2 - INTRINSIC_WIDTH ** 2, 0.0))


def deconvolution_regularisation(estimate: BlurEstimate, clean: float, blocky: float) -> float:
    """Regularisation weight between ``clean`` and ``blocky`` by the photo's JPEG blockiness (log scale)."""
    t = (estimate.blockiness - BLOCKINESS_CLEAN) / (BLOCKINESS_BLOCKY - BLOCKINESS_CLEAN)
    t = min(max(t, 0.0), 1.0)
    return float(math.exp(math.log(clean) + t * (math.log(blocky) - math.log(clean))))
