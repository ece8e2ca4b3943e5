"""Filling the defect mask: sparse reconstruction in overlapping 16x16 DCT blocks.

Thin defects cut through texture; diffusion methods (cv2.inpaint's Telea and Navier-Stokes) carry the
border colour inwards and leave a smooth streak where grain, hair or foliage should continue. Here the
missing pixels are the unknowns of an iterative sparse recovery (Guleryuz 2006; the inpainting form of
Elad, Starck et al.'s morphological component analysis): starting from Telea's fill, every iteration
transforms overlapping 16x16 blocks (16 grid offsets) with the DCT, keeps only the coefficients above a
threshold, transforms back, averages the overlapping estimates and keeps the known pixels. The threshold
falls from coarse to fine, so the fill first takes the local shape, then the texture the blocks share.

Only the blocks that hold mask pixels are transformed, so the cost follows the damaged area, not the
photo size. The caller (stage.fill) uses it on the luminance; the colour planes keep Telea's fill.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

BLOCK = 16
MARGIN = BLOCK           # reflected border, so blocks at every grid offset reach the photo's edges
ITERATIONS = 8
SHIFT_STEP = 4           # block grid offsets 0, 4, 8, 12 in each direction: 16 overlapping grids
THRESHOLD_START = 160.0  # 8-bit levels (orthonormal DCT keeps the pixel scale)
THRESHOLD_END = 3.0
TELEA_RADIUS = 3


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def _separable(blocks: np.ndarray, matrix_t: np.ndarray) -> np.ndarray:
    """2-D transform of (N, B*B) flattened blocks as two large GEMMs; the result comes back transposed
    within each block (harmless: thresholding treats every coefficient alike and the inverse undoes it)."""
    count, size = blocks.shape[0], matrix_t.shape[0]
    rows = (blocks.reshape(count * size, size) @ matrix_t).reshape(count, size, size)
    return (rows.transpose(0, 2, 1).reshape(count * size, size) @ matrix_t).reshape(count, size * size)


_D = _dct_matrix(BLOCK).astype(np.float32)
_DT = np.ascontiguousarray(_D.T)


def telea(plane: np.ndarray, mask8: np.ndarray) -> np.ndarray:
    """cv2.inpaint (Telea) of a float plane in 8-bit units (OpenCV takes 8-bit or float32 one-channel)."""
    return cv2.inpaint(plane.astype(np.float32), mask8, TELEA_RADIUS, cv2.INPAINT_TELEA)


def _blocks_over(mask_padded: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Top-left corners (flat indices into the padded plane) of the grid-(dy, dx) blocks holding mask pixels."""
    height, width = mask_padded.shape
    rows, cols = (height - dy) // BLOCK, (width - dx) // BLOCK
    grid = mask_padded[dy:dy + rows * BLOCK, dx:dx + cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    by, bx = np.nonzero(grid.any(axis=(1, 3)))
    return ((dy + by * BLOCK) * width + dx + bx * BLOCK).astype(np.int64)


def sparse_fill(plane: np.ndarray, mask: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """``plane`` (float32, 8-bit units) with the pixels under ``mask`` re-estimated; others unchanged.

    Only blocks that hold mask pixels are transformed: the cost follows the damaged area, not the photo.
    """
    height, width = plane.shape
    filled = telea(plane, mask.astype(np.uint8)) if start is None else start.astype(np.float32)
    if not mask.any():
        return filled
    # a reflected margin lets blocks at every grid offset reach the photo's edges
    work = np.pad(filled, MARGIN, mode="reflect")
    mask_padded = np.pad(mask, MARGIN)
    padded_width = work.shape[1]
    # each masked pixel's slot in the per-iteration sums
    slot = np.full(mask_padded.shape, -1, np.int64)
    masked_flat = np.flatnonzero(mask_padded)
    slot.ravel()[masked_flat] = np.arange(len(masked_flat))
    offsets = (np.arange(BLOCK)[:, None] * padded_width + np.arange(BLOCK)[None, :]).ravel()
    grids = []
    for dy in range(0, BLOCK, SHIFT_STEP):
        for dx in range(0, BLOCK, SHIFT_STEP):
            corners = _blocks_over(mask_padded, dy, dx)
            pixels = corners[:, None] + offsets[None, :]
            slots = slot.ravel()[pixels]
            grids.append((pixels, slots >= 0, slots[slots >= 0]))
    flat = work.ravel()
    sums = np.empty(len(masked_flat), np.float32)
    for iteration in range(ITERATIONS):
        # geometric decay: coarse structure first, fine texture last
        threshold = THRESHOLD_START * (THRESHOLD_END / THRESHOLD_START) ** (iteration / max(1, ITERATIONS - 1))
        sums[:] = 0.0
        for pixels, inside, slots in grids:
            coeffs = _separable(flat[pixels], _DT)
            dc = coeffs[:, 0].copy()
            coeffs[np.abs(coeffs) < threshold] = 0.0
            coeffs[:, 0] = dc            # the block mean is never thresholded away
            # blocks of one grid are disjoint, so every masked pixel appears once per grid
            sums[slots] += _separable(coeffs, _D)[inside]
        flat[masked_flat] = sums / len(grids)
    return np.ascontiguousarray(work[MARGIN:MARGIN + height, MARGIN:MARGIN + width])
