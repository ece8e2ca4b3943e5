"""Deblur stage: a real deblurring network (MAXIM-3S or DeblurGAN-v2), tiled, blended with the input.

Pure function of (picture, params); the model objects it uses are shared and read-only. Large images go
through the shared tiler (overlapping tiles with context, linear cross-fades), so memory stays bounded by
one tile whatever the image size. Alpha, EXIF, ICC and bit depth pass through unchanged; a grayscale
picture stays grayscale.
"""
from __future__ import annotations


import numpy as np

from shared.contract import ModelUnavailable, Param, StageContext
from shared.imaging import Picture, is_grayscale
from shared.tiling import process_tiled
from shared.settings import cached_settings

from .blur_auto import decide
from .blur_estimate import estimate_blur
from .maxim_runner import release_free_memory
from .models import INCEPTION, MAXIM, MOBILENET, MODEL_FILES, SPECS, DeblurModels
from .settings import DeblurSettings

# tile geometry per model, from the specs (bench/deblur.py reads it too); MAXIM plans its own windows
TILING = {spec.name: spec.tiling.as_dict() for spec in SPECS if spec.name != MAXIM}

PARAMS = (
    Param("mode", "enum", "auto", "auto = measure the blur first: a sharp photo is returned unchanged, a defocused "
          "one deconvolved, a motion-blurred one deblurred by the network (strength scaled by the measured "
          "blur); force = always the network", choices=("auto", "force")),
    Param("model", "enum", None, "deblur network; null = the default (first installed of "
          f"{MOBILENET}, {MAXIM}, {INCEPTION})", choices=tuple(MODEL_FILES), nullable=True),
    Param("strength", "float", 1.0, "blend of the deblurred result with the input (0 = input, 1 = full)",
          minimum=0.0, maximum=1.0),
)


def tiling_for(name: str, height: int | None = None, width: int | None = None) -> dict:
    """Tile settings; DEBLUR_TILE / DEBLUR_TILE_CONTEXT override the tile and context sizes.

    An image that fits in one network run of the size interior tiles get (tile + 2 x context) is processed
    whole: cutting a 340-px image into four 320-px tiles would cost four 384-px runs instead of one."""
    settings = dict(TILING[name])
    configured = cached_settings(DeblurSettings)
    if configured.deblur_tile:
        settings["tile"] = configured.deblur_tile
        settings["overlap"] = min(settings["overlap"], settings["tile"] // 4)
    if configured.deblur_tile_context is not None:
        settings["context"] = configured.deblur_tile_context
    run_size = settings["tile"] + 2 * settings["context"]
    if height is not None and width is not None and max(height, width) <= run_size:
        settings["tile"] = run_size
    return settings


def deblur_array(rgb: np.ndarray, model, *, tile: int, overlap: int, context: int, ctx=None) -> np.ndarray:
    """Deblur an H x W x 3 float32 [0, 1] array with ``model`` (a LoadedModel) via the shared tiler."""
    return process_tiled(rgb, lambda t: model(t, ctx), tile=tile, overlap=overlap, context=context, ctx=ctx)


FORCED = "force"   # the decision recorded for mode=force: the network, whatever the photo


def decision_for(picture: Picture, params: dict) -> str:
    """What ``deblur`` will do with ``picture`` (its cost depends on it): the measured blur kind in auto mode."""
    if params.get("mode", "force") != "auto":
        return FORCED
    return estimate_blur(picture.rgb, picture.alpha).kind


def make_deblur(models: DeblurModels):
    def deblur(picture: Picture, params: dict, ctx: StageContext) -> Picture:
        strength = float(params["strength"])
        # Direct callers that name no mode get the network, as before the auto decision existed.
        if params.get("mode", "force") == "auto":
            if params["model"] is not None and not models.available(params["model"]):
                models.get(params["model"])  # a named model that is not installed: 503, whatever the photo
            outcome = decide(picture, strength, ctx)
            if outcome.result is not None:
                return outcome.result
            strength = outcome.network_strength
        else:
            ctx.decision = FORCED
        try:
            name, runner = models.get(params["model"])
        except ModelUnavailable as exc:
            exc.headers.update(ctx.response_headers)  # a 503 still says what auto mode measured
            raise
        ctx.set_header("X-Deblur-Model", name)
        if strength == 0.0:
            return picture
        rgb = np.ascontiguousarray(picture.rgb, dtype=np.float32)
        if name == MAXIM:  # MAXIM plans its own windows (the fewest that fit its memory budget)
            result = runner.deblur(rgb, ctx=ctx.sub_progress(0.0, 0.98))
        else:
            result = deblur_array(rgb, runner, ctx=ctx.sub_progress(0.0, 0.98), **tiling_for(name, *rgb.shape[:2]))
            # The service serves large blocks from the heap (HEAP_LARGE_BLOCKS): give the freed activations back
            # now, as MAXIM's runner does after each window, rather than hold them until the next photo.
            release_free_memory()
        if strength < 1.0:
            result = rgb + np.float32(strength) * (result - rgb)
        if is_grayscale(picture.rgb):
            luma = result @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            result = np.repeat(luma[:, :, None], 3, axis=2)
        return picture.replace(rgb=np.clip(result, 0.0, 1.0).astype(np.float32))

    return deblur
