"""Soft, detail-keeping classical denoise: sliding-window DCT shrinkage with a Wiener second pass.

How it works (all in float, so 16-bit input keeps its precision; alpha is never touched):

1. RGB is turned into an orthonormal opponent colour space (Y = luminance, U, V = colour differences).
   Uncorrelated RGB noise stays the same sigma in each plane, while the picture's detail concentrates in
   Y, so the colour planes are cleaned almost completely and the luminance gently.
2. The noise sigma of every plane is estimated on its own, as the smaller of two estimators that texture
   fools in different ways (PCA of weakly textured patches after Liu, Tanaka and Okutomi 2012, and
   Immerkaer's Laplacian on the flattest blocks). A clean photo reads as ~0 and gets ~no smoothing, film
   grain in luminance is measured apart from chroma noise, and the user does not have to tune anything.
   Clipped (black/white) and transparent pixels are left out of the estimate.
3. Each plane is denoised by overlapping 8x8 DCT blocks at every pixel offset (Yu and Sapiro 2011):
   a hard threshold at ``HARD_THRESHOLD`` sigma gives a pilot estimate, and a second pass shrinks the
   noisy coefficients with the empirical Wiener gain from the pilot (the two-step scheme of BM3D without
   block matching). Overlapping estimates are averaged with weights favouring sparse (clean) blocks.
   Texture whose DCT coefficients stand above the noise survives both passes: detail is kept, not blurred.

Large images are processed in tiles (shared.tiling) with the sigma estimated once for the whole image.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from shared.contract import Param, StageContext
from shared.imaging import Picture, is_grayscale
from shared.tiling import process_tiled
from shared.settings import cached_settings
from .settings import DenoiseSettings

PARAMS = (
    Param("strength", "float", 1.0, "multiplier on the estimated noise level; 0 = off, <1 softer, >1 stronger",
          minimum=0.0, maximum=3.0),
    Param("sigma", "float", None, "noise sigma in 8-bit levels for every colour plane; null = estimate "
          "it from the image (per plane)", minimum=0.0, maximum=100.0, nullable=True),
    Param("chroma_strength", "float", 1.0, "extra multiplier for the colour (chroma) planes",
          minimum=0.0, maximum=4.0),
    Param("quality", "enum", "standard", "'standard' is about twice as fast; 'high' averages all 64 block "
          "grid offsets on luminance (about +0.15 dB)", choices=("standard", "high")),
)

BLOCK = 8
HARD_THRESHOLD = 2.5     # pilot pass keeps DCT coefficients above this many sigma (2.5-2.7 is the optimum)
MIN_SIGMA = 0.5          # below this (8-bit levels) a plane is treated as clean and left as it is
# block grid spacing for Y, U, V per quality: chroma is smooth, a coarser grid loses nothing there
PLANE_STEPS = {"standard": (2, 2, 2), "high": (1, 2, 2)}
# worker threads per plane (env DENOISE_THREADS; default: the CPU cores, at most 4)
THREADS = cached_settings(DenoiseSettings).denoise_threads
TILE = 512               # tile side for large images (bounded memory); the two passes reach 14 px
TILE_OVERLAP = 16
TILE_CONTEXT = 16

# Orthonormal opponent transform: rows are Y, U, V.
_OPPONENT = np.array([[1 / math.sqrt(3)] * 3,
                      [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                      [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)]], dtype=np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.astype(np.float32)


_D = _dct_matrix(BLOCK)
_DT = np.ascontiguousarray(_D.T)


# ----------------------------------------------------------------------------------------------------------
# noise estimation

_EST_PATCH = 5


def _patch_texture(plane: np.ndarray) -> np.ndarray:
    """Sum of squared Sobel gradients over each patch, per top-left patch position."""
    gx = cv2.Sobel(plane, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(plane, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    energy = cv2.boxFilter(gx * gx + gy * gy, -1, (_EST_PATCH, _EST_PATCH), normalize=False,
                           anchor=(0, 0), borderType=cv2.BORDER_REFLECT)
    return energy


def _noise_texture_quantile() -> float:
    """99th percentile of the patch texture of unit Gaussian noise (a fixed seed: deterministic)."""
    noise = np.random.default_rng(12345).standard_normal((384, 384)).astype(np.float32)
    energy = _patch_texture(noise)[:-_EST_PATCH, :-_EST_PATCH]
    return float(np.quantile(energy[::_EST_PATCH, ::_EST_PATCH], 0.99))


_TEXTURE_TAU = _noise_texture_quantile()


def _min_eigenvalue(patches: np.ndarray) -> float | None:
    n, p = patches.shape
    if n < 4 * p:
        return None
    cov = np.cov(patches, rowvar=False)
    smallest = max(float(np.linalg.eigvalsh(cov)[0]), 0.0)
    # the smallest eigenvalue of a sample covariance is biased low (Marchenko-Pastur edge)
    return smallest / (1 - math.sqrt(p / n)) ** 2


def _pca_sigma(plane: np.ndarray, valid: np.ndarray | None, iterations: int = 4) -> float | None:
    """Noise sigma from the smallest eigenvalue of the covariance of weakly textured 5x5 patches."""
    height, width = plane.shape
    ps = _EST_PATCH
    rows, cols = height // ps, width // ps
    if rows * cols < 8 * ps * ps:
        return None
    crop = plane[:rows * ps, :cols * ps]
    patches = crop.reshape(rows, ps, cols, ps).transpose(0, 2, 1, 3).reshape(-1, ps * ps).astype(np.float64)
    texture = _patch_texture(plane)[:rows * ps:ps, :cols * ps:ps].reshape(-1)
    if valid is not None:
        ok = valid[:rows * ps, :cols * ps].reshape(rows, ps, cols, ps).all(axis=(1, 3)).reshape(-1)
        if ok.sum() >= 8 * ps * ps:
            patches, texture = patches[ok], texture[ok]
    variance = _min_eigenvalue(patches)
    if variance is None:
        return None
    for _ in range(iterations):
        refined = _min_eigenvalue(patches[texture <= _TEXTURE_TAU * variance])
        if refined is None:
            break
        variance = refined
    return math.sqrt(variance)


_LAPLACE_DIFF = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_IMMERKAER_BLOCK = 16


def _immerkaer_level(plane: np.ndarray, valid: np.ndarray | None) -> float | None:
    """25th percentile over 16x16 blocks of the mean |Laplacian difference| response (flattest blocks)."""
    response = np.abs(cv2.filter2D(plane, -1, _LAPLACE_DIFF, borderType=cv2.BORDER_REFLECT))
    b = _IMMERKAER_BLOCK
    rows, cols = plane.shape[0] // b, plane.shape[1] // b
    if rows * cols < 8:
        return None
    means = response[:rows * b, :cols * b].reshape(rows, b, cols, b).mean(axis=(1, 3)).ravel()
    if valid is not None:
        inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ok = inner[:rows * b, :cols * b].reshape(rows, b, cols, b).all(axis=(1, 3)).ravel()
        if ok.sum() >= 8:
            means = means[ok]
    return float(np.percentile(means, 25))


def _immerkaer_unit_level() -> float:
    noise = np.random.default_rng(54321).standard_normal((512, 512)).astype(np.float32)
    return _immerkaer_level(noise, None)


_IMMERKAER_UNIT = _immerkaer_unit_level()   # the level pure unit-sigma noise gives (calibration)


def estimate_noise_sigma(plane: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Gaussian noise sigma of one plane (same units as ``plane``); 0 when the plane is too small.

    Two estimators that are fooled by different things; the smaller answer wins, so texture is never
    mistaken for noise (a clean photo stays untouched):
    - PCA (Liu, Tanaka, Okutomi 2012): non-overlapping 5x5 patches, the smallest eigenvalue of their
      covariance is the noise variance when patches carry no texture in some direction; patches are then
      restricted to those whose gradient energy pure noise of the current estimate would give, and the
      estimate is refined. Fooled by fine texture in every direction (foliage).
    - Immerkaer (1996) on the flattest quarter of 16x16 blocks, calibrated on pure noise. Fooled by an
      image without flat areas (brick walls).
    ``valid`` (bool, same shape) excludes pixels such as clipped or transparent ones.
    """
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    estimates = []
    pca = _pca_sigma(plane, valid)
    if pca is not None:
        estimates.append(pca)
    level = _immerkaer_level(plane, valid)
    if level is not None:
        estimates.append(level / _IMMERKAER_UNIT)
    return min(estimates) if estimates else 0.0


def _valid_pixels(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Pixels whose noise is not clipped (no channel at 0 or full scale) and that are visible."""
    low, high = 1.5 / 255, 253.5 / 255
    valid = ((rgb > low) & (rgb < high)).all(axis=2)
    if alpha is not None:
        valid &= alpha > 0.5
    return valid


# ----------------------------------------------------------------------------------------------------------
# sliding-window DCT denoiser (one plane, values in 8-bit levels)

def _block_dct(window: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """2-D DCT of every 8x8 block of a (8 rows, 8 cols) image window.

    Only left-multiplications by the 8x8 matrix are used (a transpose in between does the second axis):
    BLAS is fast for those and slow for the right-multiplication of a tall, 8-wide matrix. The result has
    the layout (cols, u, rows, v): block (r, c) holds coefficient (v, u) at ``[c, u, r, v]``.
    """
    along_y = np.matmul(_D, window.reshape(rows, BLOCK, BLOCK * cols)).reshape(BLOCK * rows, BLOCK * cols)
    return np.matmul(_D, cv2.transpose(along_y).reshape(cols, BLOCK, BLOCK * rows)).reshape(
        cols, BLOCK, rows, BLOCK)


def _block_idct(coeffs: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Inverse of ``_block_dct``: back to a (8 rows, 8 cols) image window."""
    along_x = np.matmul(_DT, coeffs.reshape(cols, BLOCK, BLOCK * rows)).reshape(BLOCK * cols, BLOCK * rows)
    return np.matmul(_DT, cv2.transpose(along_x).reshape(rows, BLOCK, BLOCK * cols)).reshape(
        BLOCK * rows, BLOCK * cols)


def _accumulate(sources: list[np.ndarray], estimate, offsets: list[tuple[int, int]]):
    padded_h, padded_w = sources[0].shape
    acc = np.zeros((padded_h, padded_w), np.float32)
    # weight of the block whose top-left corner is at (y, x); every block has its own corner
    corner_weights = np.zeros((padded_h, padded_w), np.float32)
    for dy, dx in offsets:
        rows, cols = (padded_h - dy) // BLOCK, (padded_w - dx) // BLOCK
        window = np.s_[dy:dy + rows * BLOCK, dx:dx + cols * BLOCK]
        coeffs = [_block_dct(np.ascontiguousarray(s[window]), rows, cols) for s in sources]
        kept, weight = estimate(coeffs)
        recon = _block_idct(kept, rows, cols).reshape(rows, BLOCK, cols, BLOCK)
        recon *= weight.T[:, None, :, None]
        acc[window].reshape(rows, BLOCK, cols, BLOCK).__iadd__(recon)
        corner_weights[dy:dy + rows * BLOCK:BLOCK, dx:dx + cols * BLOCK:BLOCK] = weight.T
    return acc, corner_weights


def _dct_pass(sources: list[np.ndarray], estimate, pad: int, shape: tuple[int, int], step: int) -> np.ndarray:
    """Aggregate the blockwise estimates of all block grid offsets; ``estimate(coeffs) -> (kept, weight)``
    works on ``_block_dct`` layout and returns one weight per block, shape (cols, rows).

    The offsets are shared among ``THREADS`` threads (numpy and BLAS release the GIL), each with its own
    accumulators, summed at the end: nothing is shared between calls or requests.
    """
    offsets = [(dy, dx) for dy in range(0, BLOCK, step) for dx in range(0, BLOCK, step)]
    workers = max(1, min(THREADS, len(offsets)))
    if workers == 1:
        acc, weights = _accumulate(sources, estimate, offsets)
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda i: _accumulate(sources, estimate, offsets[i::workers]), range(workers)))
        acc, weights = parts[0]
        for more_acc, more_weights in parts[1:]:
            acc += more_acc
            weights += more_weights
    # a pixel's total weight sums the blocks whose corner lies up to 7 px above and left of it
    weights = cv2.boxFilter(weights, -1, (BLOCK, BLOCK), anchor=(BLOCK - 1, BLOCK - 1), normalize=False,
                            borderType=cv2.BORDER_CONSTANT)
    height, width = shape
    return acc[pad:pad + height, pad:pad + width] / weights[pad:pad + height, pad:pad + width]


def dct_denoise_plane(plane: np.ndarray, sigma: float, step: int = 1) -> np.ndarray:
    """Denoise one float32 plane (8-bit level units) with known noise ``sigma``.

    ``step`` is the spacing of the block grid offsets: 1 uses all 64 (best), 2 uses 16 (4x faster, about
    0.2 dB less on luminance and nearly nothing less on the smooth chroma planes).
    """
    if sigma <= 0:
        return plane
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    pad = BLOCK - 1
    border = cv2.BORDER_REFLECT_101 if min(plane.shape) > pad else cv2.BORDER_REPLICATE
    padded = cv2.copyMakeBorder(plane, pad, pad, pad, pad, border)
    threshold = np.float32(HARD_THRESHOLD * sigma)
    variance = np.float32(sigma * sigma)

    def hard(coeffs):
        c = coeffs[0]
        keep = np.abs(c) > threshold
        keep[:, 0, :, 0] = True                     # the block mean always stays
        count = keep.sum(axis=(1, 3), dtype=np.float32)
        return c * keep, 1.0 / count

    pilot = _dct_pass([padded], hard, pad, plane.shape, step)
    pilot_padded = cv2.copyMakeBorder(pilot, pad, pad, pad, pad, border)

    def wiener(coeffs):
        noisy, clean = coeffs
        power = clean * clean
        gain = power / (power + variance)
        weight = 1.0 / (variance * np.einsum("aibj,aibj->ab", gain, gain) + 1e-6)
        return noisy * gain, weight.astype(np.float32)

    return _dct_pass([padded, pilot_padded], wiener, pad, plane.shape, step)


# ----------------------------------------------------------------------------------------------------------
# the stage

def plane_sigmas(rgb: np.ndarray, alpha: np.ndarray | None = None) -> list[float]:
    """Estimated noise sigma (8-bit levels) of the Y, U, V opponent planes."""
    opponent = (rgb * np.float32(255)) @ _OPPONENT.T
    valid = _valid_pixels(rgb, alpha)
    return [estimate_noise_sigma(opponent[:, :, c], valid) for c in range(3)]


def denoise_rgb(rgb: np.ndarray, sigmas: list[float], ctx=None, quality: str = "standard") -> np.ndarray:
    """Denoise float RGB in [0, 1] given per-plane (Y, U, V) sigmas in 8-bit levels."""
    steps = PLANE_STEPS[quality]
    active = [c for c in range(3) if sigmas[c] >= MIN_SIGMA]
    if not active:
        return rgb

    def tile_fn(tile: np.ndarray) -> np.ndarray:
        opponent = (tile * np.float32(255)) @ _OPPONENT.T
        for c in active:
            opponent[:, :, c] = dct_denoise_plane(opponent[:, :, c], sigmas[c], steps[c])
        return opponent @ _OPPONENT * np.float32(1 / 255)   # _OPPONENT is orthonormal: inverse = transpose

    out = process_tiled(rgb, tile_fn, tile=TILE, overlap=TILE_OVERLAP, context=TILE_CONTEXT, ctx=ctx)
    return np.clip(out, 0, 1, out=out)


def denoise(picture: Picture, params: dict, ctx: StageContext) -> Picture:
    rgb = picture.rgb
    gray = is_grayscale(rgb)
    if params["sigma"] is not None:
        # sigma is per RGB channel; a gray picture's noise is the same in all three, so sqrt(3) of it in Y
        sigmas = [float(params["sigma"]) * (math.sqrt(3) if gray else 1.0)] + [float(params["sigma"])] * 2
    elif gray:
        # one plane: the luminance of a gray image is the gray value times sqrt(3), so is its noise
        sigmas = [estimate_noise_sigma(rgb[:, :, 0] * np.float32(255 * math.sqrt(3)),
                                       _valid_pixels(rgb, picture.alpha)), 0.0, 0.0]
    else:
        sigmas = plane_sigmas(rgb, picture.alpha)
    ctx.set_header("X-Noise-Sigma", f"{sigmas[0] / (math.sqrt(3) if gray else 1):.2f}")
    ctx.set_header("X-Noise-Sigma-YUV", ",".join(f"{s:.2f}" for s in sigmas))
    strength = params["strength"]
    scaled = [sigmas[0] * strength] + [s * strength * params["chroma_strength"] for s in sigmas[1:]]
    if gray:
        scaled[1] = scaled[2] = 0.0
    if all(s < MIN_SIGMA for s in scaled):
        ctx.set_progress(1.0)
        return picture
    out = denoise_rgb(rgb, scaled, ctx=ctx, quality=params["quality"])
    if gray:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    return picture.replace(rgb=np.ascontiguousarray(out, dtype=np.float32))
