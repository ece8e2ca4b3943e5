"""Upscale stage: Real-ESRGAN super-resolution, tiled, with exact output scale and same-size enhance.

Modes
- ``scale`` s in (1, 8]: one model pass at the model's native factor (x4, or x2 for RealESRGAN_x2plus),
  then a high-quality resize to exactly round(s * size), as Real-ESRGAN's ``outscale`` does
  (Lanczos when enlarging, area averaging when reducing).
- ``enhance``: output at the input size with the model's detail. The input is first reduced by
  ``enhance_reduce`` (area), upscaled by the model, and area-resized back to the original size.
  ``enhance_reduce`` = 1 runs the model on the full-size image (slowest, most faithful: the model's
  restoration at the original detail level); 2 (default) runs it on a quarter of the pixels (4x faster)
  and lets the model re-synthesise the finest detail. Measured in bench/upscale.py.
Alpha is upscaled by the model too; 16-bit input keeps 16 bits (the decoded Picture.bit_depth);
grey input gives grey output.
"""
from __future__ import annotations


import cv2
import numpy as np

from shared.contract import ImageTooLarge, Param, StageContext
from shared.imaging import Picture, is_grayscale
from shared.model_store import ModelStore
from shared.tiling import process_tiled
from shared.settings import cached_settings

from .models import MODELS, STAGE, UpscaleModels
from .settings import UpscaleSettings

MAX_OUTPUT_ENV = "UPSCALE_MAX_OUTPUT_PIXELS"
DEFAULT_MAX_OUTPUT = 32_000_000

PARAMS = (
    Param("model", "enum", "auto", "network; auto = realesr-general-x4v3 when installed, else the best installed",
          choices=("auto",) + tuple(MODELS)),
    Param("scale", "float", 4.0, "output size factor (model pass, then an exact high-quality resize)",
          minimum=1.0, maximum=8.0, exclusive_minimum=True),
    Param("enhance", "bool", False, "keep the input size and add the model's detail instead of enlarging "
          "(scale is then ignored)"),
    Param("enhance_reduce", "float", 2.0, "enhance only: the input is reduced by this factor before the model "
          "pass (1 = full-size pass, slowest; 2 = 4x fewer pixels)", minimum=1.0, maximum=4.0),
    Param("denoise_strength", "float", 0.5, "realesr-general-x4v3 only: 0 keeps noise (its -wdn- twin), "
          "1 = full denoising; blends the two networks' weights as Real-ESRGAN does", minimum=0.0, maximum=1.0),
    Param("tile", "int", None, "tile size in input pixels (null = model default: 256 for RRDBNet, 512 compact)",
          minimum=32, maximum=2048, nullable=True),
)

REGISTRY = UpscaleModels()


def max_output_pixels() -> int:
    return cached_settings(UpscaleSettings).upscale_max_output_pixels


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    enlarging = width * height > image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA)
    if out.ndim == 2 and image.ndim == 3:
        out = out[:, :, None]
    return np.clip(out, 0, 1, out=out)


def upscale(picture: Picture, params: dict, ctx: StageContext, *, store: ModelStore | None = None) -> Picture:
    models = UpscaleModels(store) if store is not None else REGISTRY
    name = models.resolve(params["model"])
    spec, model = models.specs[name], MODELS[name]
    models.ensure_available(name)
    height, width = picture.height, picture.width
    if params["enhance"]:
        reduce = params["enhance_reduce"]
        in_w, in_h = max(1, round(width / reduce)), max(1, round(height / reduce))
        out_w, out_h = width, height
    else:
        in_w, in_h = width, height
        out_w, out_h = max(1, round(width * params["scale"])), max(1, round(height * params["scale"]))
    model_pixels = in_w * in_h * model.scale ** 2
    limit = max_output_pixels()
    if max(out_w * out_h, model_pixels) > limit:
        raise ImageTooLarge(f"upscaling {width}x{height} needs {max(out_w * out_h, model_pixels)} output pixels; "
                            f"the limit ({MAX_OUTPUT_ENV}) is {limit}", stage=STAGE)
    strength = round(params["denoise_strength"], 3) if model.twin is not None else 1.0
    engine = models.load(name, denoise_strength=strength)
    ctx.set_header("X-Upscale-Model", name)
    ctx.set_header("X-Upscale-Precision", engine.describe())

    image = picture.rgb
    has_alpha = picture.alpha is not None and float(picture.alpha.min()) < 1.0
    if has_alpha:
        image = np.concatenate([image, picture.alpha[:, :, None]], axis=2)
    if (in_w, in_h) != (width, height):
        image = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_AREA)
    tile = params["tile"] or spec.tiling.tile
    overlap = min(spec.tiling.overlap, tile // 4)
    # the model pass is nearly all of the work: it gets the first 95% of the progress
    tiles = ctx.sub_progress(0.0, 0.95)
    out = process_tiled(np.ascontiguousarray(image, dtype=np.float32), lambda t: engine(t, ctx), scale=spec.scale,
                        tile=tile, overlap=overlap, context=spec.tiling.context, ctx=tiles)
    out = _resize(out, out_w, out_h)
    rgb = out[:, :, :3]
    if is_grayscale(picture.rgb, tolerance=0.0):
        luma = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        rgb = np.repeat(luma[:, :, None], 3, axis=2)
    if has_alpha:
        alpha = np.ascontiguousarray(out[:, :, 3])
    elif picture.alpha is not None:  # fully opaque: stays fully opaque
        alpha = np.ones((out_h, out_w), np.float32)
    else:
        alpha = None
    return picture.replace(rgb=np.ascontiguousarray(rgb), alpha=alpha)

