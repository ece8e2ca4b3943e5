"""Post-denoise (light Gaussian blur) and sharpen (unsharp mask), alone or together."""
from __future__ import annotations

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


def apply_finish(rgb: np.ndarray, params: dict) -> np.ndarray:
    if params["blur_sigma"] > 0:
        rgb = gaussian_blur(rgb, params["blur_sigma"])
    if params["sharpen_amount"] > 0:
        rgb = unsharp_mask(rgb, params["sharpen_amount"], params["sharpen_radius"], params["sharpen_threshold"])
    return rgb


def postprocess(picture: Picture, params: dict, ctx: StageContext) -> Picture:
    return picture.replace(rgb=apply_finish(picture.rgb, params).astype(np.float32, copy=False))
