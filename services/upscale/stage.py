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

import threading
from collections import OrderedDict

import cv2
import numpy as np

from shared.contract import ImageTooLarge, ModelUnavailable, Param, StageContext
from shared.imaging import Picture, is_grayscale
from shared.model_store import ModelStore
from shared.tiling import process_tiled
from shared.settings import cached_settings

from .engine import Engine
from .models import MODELS, STAGE, build_model, default_model, fetch_command, is_installed, model_fetch_command
from .settings import UpscaleSettings

MAX_OUTPUT_ENV = "UPSCALE_MAX_OUTPUT_PIXELS"
DEFAULT_MAX_OUTPUT = 32_000_000
# input tile sizes (pixels) keeping peak memory bounded; overlap/context in input pixels
DEFAULT_TILE = {"RRDBNet": 256, "SRVGGNetCompact": 512}
TILE_CONTEXT = 16
TILE_OVERLAP = 8

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


def max_output_pixels() -> int:
    return cached_settings(UpscaleSettings).upscale_max_output_pixels


class EngineCache:
    """Loaded engines by (model, denoise strength); a few kept, shared read-only across requests."""

    def __init__(self, size: int = 3):
        self.size = size
        self._engines: "OrderedDict[tuple, Engine]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, denoise_strength: float, store: ModelStore | None = None) -> Engine:
        model = MODELS[name]
        strength = round(denoise_strength, 3) if model.twin is not None else 1.0
        key = (name, strength)
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                self._engines.move_to_end(key)
                return engine
            engine = Engine(build_model(model, store, strength), model.scale)
            self._engines[key] = engine
            while len(self._engines) > self.size:
                self._engines.popitem(last=False)
            return engine


ENGINES = EngineCache()


def resolve_model(requested: str, store: ModelStore | None = None) -> str:
    if requested != "auto":
        return requested
    name = default_model(store)
    if name is None:
        raise ModelUnavailable("realesr-general-x4v3", fetch_command(), reason="no upscale model is installed",
                               stage=STAGE)
    return name


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    enlarging = width * height > image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LANCZOS4 if enlarging else cv2.INTER_AREA)
    if out.ndim == 2 and image.ndim == 3:
        out = out[:, :, None]
    return np.clip(out, 0, 1, out=out)


def upscale(picture: Picture, params: dict, ctx: StageContext, *, store: ModelStore | None = None,
            engines: EngineCache = ENGINES) -> Picture:
    name = resolve_model(params["model"], store)
    model = MODELS[name]
    if not is_installed(model, store):
        cache = store or ModelStore()
        files = [model.file] + ([model.twin] if model.twin else [])
        reasons = {cache.missing_reason(f) for f in files if not cache.is_available(f)}
        raise ModelUnavailable(name, model_fetch_command(model), stage=STAGE, reason="; ".join(sorted(reasons)))
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
    engine = engines.get(name, params["denoise_strength"], store)
    ctx.set_header("X-Upscale-Model", name)
    ctx.set_header("X-Upscale-Precision", f"{engine.device.type}/{engine.precision}")

    image = picture.rgb
    has_alpha = picture.alpha is not None and float(picture.alpha.min()) < 1.0
    if has_alpha:
        image = np.concatenate([image, picture.alpha[:, :, None]], axis=2)
    if (in_w, in_h) != (width, height):
        image = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_AREA)
    tile = params["tile"] or DEFAULT_TILE[type(engine.net).__name__]
    overlap = min(TILE_OVERLAP, tile // 4)
    out = process_tiled(np.ascontiguousarray(image, dtype=np.float32), engine.run_image, scale=model.scale,
                        tile=tile, overlap=overlap, context=TILE_CONTEXT, progress=ctx.progress)
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

