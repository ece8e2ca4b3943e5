"""Soft, detail-keeping denoise: non-local means with a strength set from the image's own noise level.

The noise sigma is estimated first (Immerkaer's Laplacian-difference estimator on luminance), so a clean
photo gets almost no smoothing while grain and light noise are removed. NLM runs on 8-bit data (OpenCV's
fast path); the correction it makes is added to the full-precision image so 16-bit input keeps its depth.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from shared.contract import Param, StageContext
from shared.imaging import Picture, to_integer

PARAMS = (
    Param("strength", "float", 1.0, "multiplier on the filter strength derived from the estimated noise",
          minimum=0.0, maximum=3.0),
    Param("sigma", "float", None, "noise sigma in 8-bit levels; null = estimate it from the image",
          minimum=0.0, maximum=100.0, nullable=True),
    Param("chroma_strength", "float", 1.5, "colour-noise strength relative to luminance",
          minimum=0.0, maximum=4.0),
    Param("search_window", "int", 21, "NLM search window (odd, pixels)", minimum=7, maximum=35),
)

# h = H_PER_SIGMA * sigma follows OpenCV's guidance (h ~ noise sigma gives strong smoothing); a little
# below one keeps fine texture. Under MIN_SIGMA the image is treated as clean and left as it is.
H_PER_SIGMA = 0.9
MIN_SIGMA = 1.0

_LAPLACE_DIFF = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def estimate_noise_sigma(gray: np.ndarray) -> float:
    """Gaussian noise sigma (in the units of ``gray``) by Immerkaer (1996), robust to edges via a median
    over blocks instead of the global mean."""
    height, width = gray.shape
    if height < 3 or width < 3:
        return 0.0
    response = np.abs(cv2.filter2D(gray.astype(np.float32), -1, _LAPLACE_DIFF, borderType=cv2.BORDER_REFLECT))
    response = response[1:-1, 1:-1]
    # Edges and texture inflate the estimate; the flattest blocks tell the noise.
    block = 16
    bh, bw = response.shape[0] // block, response.shape[1] // block
    if bh * bw >= 16:
        blocks = response[:bh * block, :bw * block].reshape(bh, block, bw, block).mean(axis=(1, 3)).ravel()
        level = float(np.percentile(blocks, 25))
    else:
        level = float(response.mean())
    return math.sqrt(math.pi / 2) * level / 6.0


def denoise(picture: Picture, params: dict, ctx: StageContext) -> Picture:
    rgb8 = to_integer(picture.rgb, 8)
    gray = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)
    sigma = params["sigma"] if params["sigma"] is not None else estimate_noise_sigma(gray.astype(np.float32))
    ctx.set_header("X-Noise-Sigma", f"{sigma:.2f}")
    h_luma = H_PER_SIGMA * sigma * params["strength"]
    if sigma < MIN_SIGMA or h_luma <= 0:
        return picture
    h_chroma = h_luma * params["chroma_strength"]
    window = params["search_window"] | 1
    denoised8 = cv2.fastNlMeansDenoisingColored(rgb8, None, h=h_luma, hColor=h_chroma,
                                                templateWindowSize=7, searchWindowSize=window)
    ctx.progress(1, 1)
    if picture.bit_depth == 8:
        return picture.replace(rgb=denoised8.astype(np.float32) * np.float32(1 / 255))
    correction = (denoised8.astype(np.float32) - rgb8.astype(np.float32)) * np.float32(1 / 255)
    return picture.replace(rgb=np.clip(picture.rgb + correction, 0, 1))
