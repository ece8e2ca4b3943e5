"""Finding print damage: thin elongated defects (scratches, creases, hairs) and small blobs (dust, spots).

Works on the luminance in 8-bit units, once per polarity (bright defects: scraped emulsion, crease ridges,
dust on the print; dark ones: dirt in a groove, crease shadows, dust on the negative):

1. A morphological top-hat with a disc wider than any defect (``TOPHAT_SIZE``) keeps exactly the
   structures narrower than it, with their contrast against the local background; broad shading and
   objects are gone.
2. Lines: the top-hat, thickened by one pixel (a 1-px digital curve holds no straight digital segment),
   opened with line segments of ``LINE_LENGTH`` px in ``ANGLES`` directions (the max over directions, less
   ``ISOTROPIC_SHARE`` of the min, and which direction gave it), keeps what is long in some direction and drops specks and most texture. The
   bar is a contrast floor plus ``LINE_TEXTURE_FACTOR`` times the local median of that response in 32x32
   blocks (hair, grass, wood grain raise it; one defect stays a minority of a block). Pixels above
   ``LINE_LOW`` of the bar, minus wide parts, are grouped by direction into connected components, which
   are kept when thin and long enough for their strength (see ``_long_thin``). Their pixels are those
   whose own top-hat carries at least ``FOOTPRINT_FACTOR`` of the local line response; a line's mean tone
   must also differ from the ring just around it by ``RING_CONTRAST``.
3. Blobs: small compact components of the top-hat above a bar that follows the local texture (the median
   top-hat of 16x16 blocks, spread to the neighbouring blocks, times ``TEXTURE_FACTOR`` plus a floor,
   times ``DUST_FACTOR``), away from any line, kept when their mean tone differs from the ring around them
   by more than ``RING_CONTRAST`` plus ``RING_FACTOR`` times the ring's standard deviation (a speck lies on a
   surface smooth at its own scale; a leaf or fur tuft among others of its kind does not).

All bars are scaled by the sensitivity (0.5 = as calibrated).

``mode=auto`` repairs what passes the thresholds; ``force`` also what passes ``CANDIDATE_FACTOR`` of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

TOPHAT_SIZE = 11          # disc diameter: removes structures up to 10 px wide (defects are 1-5 px, specks <= 9)
LINE_LENGTH = 21          # a segment this long must fit inside a line defect
ANGLES = 8
LEVEL_BLOCK = 16
LEVEL_PERCENTILE = 50
MIN_CONTRAST = 14.0       # 8-bit levels: the faintest defect worth flagging on a smooth area
TEXTURE_FACTOR = 3.0
DUST_FACTOR = 2.2         # blobs are easier to confuse with detail than lines: a higher bar
CANDIDATE_FACTOR = 0.7    # force mode repairs candidates down to this share of the threshold
GROW_FACTOR = 0.5         # a speck's pixels: its top-hat above this share of its bar
LINE_LOW = 0.5            # line pixels: response above this share of the bar
LINE_CONTRAST = 35.0      # 8-bit levels
LINE_TEXTURE_FACTOR = 3.0
LINE_LEVEL_BLOCK = 32
ISOTROPIC_SHARE = 0.3     # share of the weakest direction's opening taken off the line response
FOOTPRINT_FACTOR = 0.35   # a line's pixels: their top-hat above this share of the local line response
MIN_LINE_LENGTH = 50      # px
MAX_LINE_WIDTH = 12.0     # px: mean width (area / length) of the thickened response; wider parts are cut
SCORE_BAR = 2.0           # mean strength x sqrt(length / MIN_LINE_LENGTH) a line must reach
WIDE_HALF_WIDTH = 6.0     # px: thicker than any thickened defect, so a merge with texture or an object: cut
MAX_DUST_AREA = 110       # px
MAX_DUST_SIDE = 13        # px
RING_CONTRAST = 30.0      # 8-bit levels: a defect's mean tone against the ring around it, on a smooth surface
RING_FACTOR = 5.0         # ... plus this many times the ring's own standard deviation


@dataclass
class Detection:
    mask: np.ndarray                                  # bool H x W: the defects to repair
    candidates: np.ndarray                            # bool H x W: everything above the candidate bar
    counts: dict[str, int] = field(default_factory=dict)


def sensitivity_scale(sensitivity: float) -> float:
    """Threshold multiplier: 0.5 is the calibrated default, 1 halves the thresholds, 0 doubles them."""
    return 2.0 ** (1.0 - 2.0 * sensitivity)


def _line_kernels() -> list[np.ndarray]:
    kernels = []
    half = LINE_LENGTH // 2
    for index in range(ANGLES):
        angle = math.pi * index / ANGLES
        kernel = np.zeros((LINE_LENGTH, LINE_LENGTH), np.uint8)
        dx, dy = math.cos(angle) * half, math.sin(angle) * half
        cv2.line(kernel, (round(half - dx), round(half - dy)), (round(half + dx), round(half + dy)), 1, 1)
        kernels.append(kernel)
    return kernels


_LINES = _line_kernels()
_SQUARE3 = np.ones((3, 3), np.uint8)
_WIDE_CUT = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
_RING = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_DISC = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (TOPHAT_SIZE, TOPHAT_SIZE))


def texture_level(values: np.ndarray, block: int = LEVEL_BLOCK, spread: bool = True) -> np.ndarray:
    """Local level of ``values``: a low percentile in blocks (thin defects do not raise it), interpolated."""
    height, width = values.shape
    if height < block or width < block:      # a photo smaller than one block: one level for all of it
        return np.full(values.shape, np.percentile(values, LEVEL_PERCENTILE), np.float32)
    rows, cols = height // block, width // block
    blocks = values[:rows * block, :cols * block].reshape(rows, block, cols, block)
    flat = blocks.transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    rank = int(LEVEL_PERCENTILE / 100 * (flat.shape[2] - 1))
    level = np.partition(flat, rank, axis=2)[:, :, rank].astype(np.float32)
    if spread:
        # a 3x3-block maximum: a textured block lends its bar to its neighbours, so texture edges are covered
        level = cv2.dilate(level, np.ones((3, 3), np.uint8))
    return cv2.resize(level, (width, height), interpolation=cv2.INTER_LINEAR)


def _line_response(tophat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max over directions of the line openings, and the index of the direction that gave it."""
    response = np.zeros_like(tophat)
    least = np.full_like(tophat, np.inf)
    direction = np.zeros(tophat.shape, np.uint8)
    for index, kernel in enumerate(_LINES):
        opened = cv2.morphologyEx(tophat, cv2.MORPH_OPEN, kernel)
        better = opened > response
        np.copyto(response, opened, where=better)
        np.copyto(direction, np.uint8(index), where=better)
        np.minimum(least, opened, out=least)
    if ISOTROPIC_SHARE:
        # what is long in every direction (a bright patch, a mesh of joints or leaves) is not a line
        response -= ISOTROPIC_SHARE * least
    return response, direction


def _components(binary: np.ndarray):
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    return count, labels, stats


def _long_thin(ratio: np.ndarray, direction: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Line pixels (confident, candidates): thin, coherently oriented parts of ``ratio > LINE_LOW * floor``.

    Pixels are grouped by direction (each group spans three neighbouring directions, so a gently curving
    scratch stays one piece) before they are joined into components: a scratch crossing hair or an object
    is not merged with it. A faint line is accepted when it is long (a coherent curve over hundreds of
    pixels is not texture), a short one only when it is strong: score = mean ratio x sqrt(length /
    MIN_LINE_LENGTH) >= SCORE_BAR (candidates: >= SCORE_BAR x floor). Wide parts are cut away first.
    """
    core = ratio > LINE_LOW * floor
    half_width = cv2.distanceTransform(core.astype(np.uint8), cv2.DIST_L2, 3)
    core &= ~(cv2.dilate((half_width > WIDE_HALF_WIDTH).astype(np.uint8), _WIDE_CUT) > 0)
    capped = np.minimum(ratio, 3.0)
    confident = np.zeros(core.shape, bool)
    candidates = np.zeros(core.shape, bool)
    for first in range(0, ANGLES, 2):
        # directions first-1, first, first+1 (modulo ANGLES)
        members = core & (((direction.astype(np.int16) - (first - 1)) % ANGLES) < 3)
        count, labels, stats = _components(members)
        if count <= 1:
            continue
        length = np.hypot(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
        width = stats[:, cv2.CC_STAT_AREA] / np.maximum(length, 1)
        strength = np.bincount(labels.ravel(), capped.ravel(), count) / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        score = strength * np.sqrt(length / MIN_LINE_LENGTH)
        shaped = (length >= MIN_LINE_LENGTH) & (width <= MAX_LINE_WIDTH)
        shaped[0] = False
        candidates |= (shaped & (score >= SCORE_BAR * floor))[labels]
        confident |= (shaped & (score >= SCORE_BAR))[labels]
    return confident, candidates


def _lines(luma: np.ndarray, sign: float, tophat: np.ndarray, floor: float,
           scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(confident mask, candidate mask, number of confident lines)."""
    # A one-pixel digital curve holds no straight digital segment at most angles: thicken it first, then
    # take the footprint from the undilated top-hat.
    response, direction = _line_response(cv2.dilate(tophat, _SQUARE3))
    # Texture hardly survives the line openings, so the bar follows line-like texture only (hair, grass,
    # wood grain), measured on the response itself in blocks large enough that one defect stays a minority.
    ratio = response / ((LINE_CONTRAST + LINE_TEXTURE_FACTOR * texture_level(response, LINE_LEVEL_BLOCK, False))
                        * scale)
    # a line's pixels: those whose own top-hat carries a good part of the line's contrast there
    footprint = tophat > FOOTPRINT_FACTOR * cv2.dilate(response, _SQUARE3)
    out = [cv2.dilate(lines.astype(np.uint8), _SQUARE3).astype(bool) & footprint
           for lines in _long_thin(ratio, direction, floor)]
    # a line's mean tone must differ from the band along it (a line crosses varied ground, so the band's
    # spread is no bar here, unlike for specks)
    count, labels, _ = _components(out[1])
    if count > 1:
        contrast, _ = _ring_contrast(luma, labels, count, sign)
        ring_ratio = contrast / (RING_CONTRAST * scale)
        ring_ratio[0] = 0
        out = [out[0] & (ring_ratio > 1.0)[labels], out[1] & (ring_ratio > floor)[labels]]
    found = _components(out[0])[0] - 1
    return out[0], out[1], found


def _ring_contrast(luma: np.ndarray, labels: np.ndarray, count: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """Per component: (its mean luma minus that of a ring around it, in the defect's polarity; the ring's spread).

    A speck or scratch is a patch of a different tone laid over a surface that is smooth at its own scale,
    so the ring just outside it is nearly uniform; a leaf, a fur strand or a brick edge sits among others
    of its kind and its ring varies about as much as its own contrast.
    """
    inside = labels > 0
    near = cv2.dilate(inside.astype(np.uint8), _SQUARE3) > 0
    owner = cv2.dilate(labels.astype(np.float32), _RING).astype(np.int32)
    ring = (owner > 0) & ~near
    ring_labels = owner[ring]
    values = luma[ring].astype(np.float64)
    ring_count = np.maximum(np.bincount(ring_labels, minlength=count), 1)
    ring_mean = np.bincount(ring_labels, values, count) / ring_count
    ring_var = np.bincount(ring_labels, values * values, count) / ring_count - ring_mean ** 2
    area = np.maximum(np.bincount(labels.ravel(), minlength=count), 1)
    own_mean = np.bincount(labels.ravel(), luma.ravel().astype(np.float64), count) / area
    return sign * (own_mean - ring_mean), np.sqrt(np.maximum(ring_var, 0))


def _blobs(luma: np.ndarray, sign: float, tophat: np.ndarray, threshold: np.ndarray, floor: float,
           exclude: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    ratio = tophat / (threshold * DUST_FACTOR)
    grown = (ratio > GROW_FACTOR * floor) & ~exclude
    count, labels, stats = _components(grown)
    if count <= 1:
        empty = np.zeros(tophat.shape, bool)
        return empty, empty, 0
    small = ((stats[:, cv2.CC_STAT_AREA] <= MAX_DUST_AREA)
             & (np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]) <= MAX_DUST_SIDE))
    small[0] = False
    labels = np.where(small[labels], labels, 0)
    contrast, spread = _ring_contrast(luma, labels, count, sign)
    ring_ratio = contrast / ((RING_CONTRAST + RING_FACTOR * spread) * scale)
    candidate = small & (ring_ratio > floor)
    confident = small & (ring_ratio > 1.0)
    return confident[labels], candidate[labels], int(confident.sum())


def detect(luma: np.ndarray, *, sensitivity: float = 0.5, scratches: bool = True, dust: bool = True,
           polarity: str = "both") -> Detection:
    """Defects in a luminance plane (float32, 8-bit units)."""
    scale = sensitivity_scale(sensitivity)
    mask = np.zeros(luma.shape, bool)
    candidates = np.zeros(luma.shape, bool)
    counts = {"lines": 0, "specks": 0}
    signs = {"both": ("bright", "dark"), "bright": ("bright",), "dark": ("dark",)}[polarity]
    for sign in signs:
        operation = cv2.MORPH_OPEN if sign == "bright" else cv2.MORPH_CLOSE
        background = cv2.morphologyEx(luma, operation, _DISC)
        tophat = (luma - background) if sign == "bright" else (background - luma)
        polarity_sign = 1.0 if sign == "bright" else -1.0
        threshold = (MIN_CONTRAST + TEXTURE_FACTOR * texture_level(tophat)) * scale
        line_mask = np.zeros(luma.shape, bool)
        if scratches:
            line_mask, line_candidates, found = _lines(luma, polarity_sign, tophat, CANDIDATE_FACTOR, scale)
            mask |= line_mask
            candidates |= line_candidates
            counts["lines"] += found
        if dust:
            # a one-pixel ring around lines keeps their soft edges from reading as specks
            near_lines = cv2.dilate(candidates.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            blob_mask, blob_candidates, found = _blobs(luma, polarity_sign, tophat, threshold,
                                                       CANDIDATE_FACTOR, near_lines, scale)
            mask |= blob_mask
            candidates |= blob_candidates
            counts["specks"] += found
    return Detection(mask=mask, candidates=candidates | mask, counts=counts)
