"""Classical deconvolution of a defocused photo: regularised Wiener filter with a Gaussian PSF.

For a known (estimated) Gaussian point-spread function H and a smoothness prior (discrete Laplacian L),
the least-squares estimate is X = H* Y / (|H|^2 + lambda |L|^2) in the Fourier domain (constrained
least squares / Tikhonov-Wiener). The photo is mirror-padded first so its borders do not ring. One FFT
pair per channel: well under a second per megapixel, no model weights.
"""
from __future__ import annotations

import numpy as np
from scipy import fft

# Weight of the smoothness prior: larger suppresses noise and JPEG artefacts more, restores less detail.
# Chosen on bench/blur_decision.py's defocus set: the best for clean 8-bit photos and for JPEG q60 ones.
REGULARISATION_CLEAN = 3e-4
REGULARISATION_JPEG = 1e-2
DEFAULT_REGULARISATION = REGULARISATION_CLEAN


def _transfer_functions(height: int, width: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    gaussian = np.exp(np.float32(-2 * np.pi ** 2 * sigma ** 2) * (fy * fy + fx * fx))
    laplacian = (2 - 2 * np.cos(np.float32(2 * np.pi) * fy)) + (2 - 2 * np.cos(np.float32(2 * np.pi) * fx))
    return gaussian.astype(np.float32), laplacian.astype(np.float32)


def deconvolve_gaussian(rgb: np.ndarray, sigma: float, regularisation: float = DEFAULT_REGULARISATION) -> np.ndarray:
    """H x W x C float32 in [0, 1] deblurred for a Gaussian PSF of ``sigma`` px; same shape, clipped."""
    if sigma <= 0:
        return rgb
    height, width = rgb.shape[:2]
    pad = int(np.ceil(4 * sigma)) + 8
    pad_y, pad_x = min(pad, height - 1), min(pad, width - 1)
    padded = np.pad(rgb, ((pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="symmetric")
    size_y, size_x = fft.next_fast_len(padded.shape[0], real=True), fft.next_fast_len(padded.shape[1], real=True)
    gaussian, laplacian = _transfer_functions(size_y, size_x, sigma)
    gain = gaussian / (gaussian * gaussian + np.float32(regularisation) * laplacian * laplacian)
    out = np.empty_like(rgb, dtype=np.float32)
    for channel in range(rgb.shape[2]):
        spectrum = fft.rfft2(padded[:, :, channel], s=(size_y, size_x), workers=-1)
        spectrum *= gain
        restored = fft.irfft2(spectrum, s=(size_y, size_x), workers=-1)
        out[:, :, channel] = restored[pad_y:pad_y + height, pad_x:pad_x + width]
    return np.clip(out, 0.0, 1.0)
