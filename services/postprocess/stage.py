"""Post-denoise (light Gaussian blur) and sharpen (unsharp mask), alone or together.

Together in one call when the gateway fuses the pipeline's post-denoise and sharpen steps: the answer's
``X-Postprocess-Ms`` header ({"blur": ms, "sharpen": ms}) says what each half cost, so the gateway can still
report both steps' times.
"""
from __future__ import annotations

import json
import time

import cv2
import numpy as np

from shared.contract import Param, StageContext
from shared.imaging import Picture

PARAMS = (
    Param("blur_sigma", "float", 0.5, "post-denoise Gaussian blur sigma in pixels; 0 = off",
          minimum=0.0, maximum=10.0),
    Param("sharpen_amount", "float", 0.6, "unsharp-mask amount; 0 = off", minimum=0.0, maximum=5.0),
    Param("sharpen_radius", "float", 1.2, "unsharp-mask Gaussian radius (sigma, pixels)",
          minimum=0.1, maximum=20.0),
    Param("sharpen_threshold", "float", 2.0, "unsharp-mask threshold in 8-bit levels: smaller differences "
          "are left alone so flat areas and noise are not sharpened", minimum=0.0, maximum=255.0),
)


def gaussian_blur(plane: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(plane, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def unsharp_mask(rgb: np.ndarray, amount: float, radius: float, threshold_levels: float) -> np.ndarray:
    detail = rgb - gaussian_blur(rgb, radius)
    if threshold_levels > 0:
        # soft threshold on the detail magnitude avoids the hard halo edge of a binary mask
        limit = threshold_levels / 255.0
        magnitude = np.abs(detail)
        detail = np.sign(detail) * np.maximum(magnitude - limit, 0)
    out = rgb + amount * detail
    return np.clip(out, 0, 1, out=out)


PARTS_HEADER = "X-Postprocess-Ms"


def apply_finish(rgb: np.ndarray, params: dict, spent: dict[str, float] | None = None) -> np.ndarray:
    """Blur, then sharpen; ``spent`` (if given) accumulates each half's seconds under "blur" and "sharpen"."""
    spent = spent if spent is not None else {}
    started = time.perf_counter()
    if params["blur_sigma"] > 0:
        rgb = gaussian_blur(rgb, params["blur_sigma"])
    blurred = time.perf_counter()
    if params["sharpen_amount"] > 0:
        rgb = unsharp_mask(rgb, params["sharpen_amount"], params["sharpen_radius"], params["sharpen_threshold"])
    spent["blur"] = spent.get("blur", 0.0) + blurred - started
    spent["sharpen"] = spent.get("sharpen", 0.0) + time.perf_counter() - blurred
    return rgb


STRIP_ROWS = 256  # rows computed at a time: temporaries stay a few strips in size whatever the image


def kernel_reach(sigma: float) -> int:
    """Rows a Gaussian of ``sigma`` reads on each side (OpenCV's float kernel spans about 4 sigma)."""
    return int(np.ceil(4 * sigma)) + 1 if sigma > 0 else 0


def apply_finish_in_strips(rgb: np.ndarray, params: dict, strip_rows: int = STRIP_ROWS,
                           spent: dict[str, float] | None = None) -> np.ndarray:
    """``apply_finish`` strip by strip into one output array: each strip is computed with enough rows of
    context on both sides (the blur's and the sharpening's reach) that its result equals the whole-image one,
    while the temporaries (blurred copy, detail, magnitude) are a strip's size, not the image's."""
    reach = kernel_reach(params["blur_sigma"]) + (kernel_reach(params["sharpen_radius"])
                                                  if params["sharpen_amount"] > 0 else 0)
    height = rgb.shape[0]
    if height <= strip_rows + 2 * reach:
        return apply_finish(rgb, params, spent).astype(np.float32, copy=False)
    out = np.empty_like(rgb, dtype=np.float32)
    for top in range(0, height, strip_rows):
        bottom = min(height, top + strip_rows)
        lo, hi = max(0, top - reach), min(height, bottom + reach)
        # only the image's own top and bottom are reflected; inner strip edges read real rows
        finished = apply_finish(np.ascontiguousarray(rgb[lo:hi]), params, spent)
        out[top:bottom] = finished[top - lo:bottom - lo]
    return out


def postprocess(picture: Picture, params: dict, ctx: StageContext) -> Picture:
    spent: dict[str, float] = {}
    finished = apply_finish_in_strips(picture.rgb, params, spent=spent)
    ctx.set_header(PARTS_HEADER, json.dumps({part: round(seconds * 1000, 2) for part, seconds in spent.items()}))
    return picture.replace(rgb=finished)
