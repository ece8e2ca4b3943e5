"""Colorize stage: Zhang et al. ECCV16 / SIGGRAPH17 at the network's render size, joined at full resolution.

Pipeline (as the reference ``colorizers`` code, made fast at full size):
1. L and luminance of the full-resolution image (CIE Lab, scikit-image constants);
2. the network sees L of the image resized (bicubic) to ``render_size`` x ``render_size``;
3. its ab is upsampled (bilinear) to full size, scaled by ``saturation`` and joined with the original
   full-resolution L, so the output's lightness is the input's, pixel for pixel (no detail is softened);
   colours outside the sRGB gamut are desaturated at constant luminance rather than clipped.

``mode=auto`` first decides from chroma statistics whether the picture already has real colour (a sepia
or toned print does not) and then returns it untouched; the decision and its statistic are sent back in
the ``X-Colorize-Decision`` and ``X-Colorize-Chroma`` response headers.
"""
from __future__ import annotations

import time

import numpy as np

from shared.contract import InvalidParams, Param, StageContext
from shared.imaging import Picture

from .colour import ChromaDecision, chroma_decision, colorize_full_size, is_gray, network_lightness, upsample_ab
from .models import DEFAULT_MODEL, MODEL_FILES, ColorizeModels

DECISION_HEADER = "X-Colorize-Decision"
CHROMA_HEADER = "X-Colorize-Chroma"
MODEL_HEADER = "X-Colorize-Model"
RENDER_MULTIPLE = 8

PARAMS = (
    Param("model", "enum", DEFAULT_MODEL, "colorization network", choices=tuple(MODEL_FILES)),
    Param("saturation", "float", 1.0, "scale on the predicted chroma (ab): 0 = gray, 1 = as predicted",
          minimum=0.0, maximum=2.0),
    Param("render_size", "int", 256, f"side of the square network input (a multiple of {RENDER_MULTIPLE}; "
          "the models were trained at 256)", minimum=64, maximum=1024),
    Param("mode", "enum", "auto", "auto: leave a photo that already has real colour untouched (sepia and "
          "toned prints count as monochrome); force: colorize whatever comes", choices=("auto", "force")),
    Param("gamut", "enum", "keep-lightness", "colours the sRGB gamut cannot show: keep-lightness desaturates "
          "them at the input's luminance (output L = input L everywhere); clip clips the channels as the "
          "reference implementation does (changes L there)", choices=("keep-lightness", "clip")),
)


def colorize_array(rgb: np.ndarray, network, render_size: int = 256, saturation: float = 1.0,
                   bit_depth: int = 8, keep_lightness: bool = True,
                   timings: dict[str, float] | None = None, ctx=None) -> np.ndarray:
    """H x W x 3 float32 sRGB in [0, 1] -> colorized, same shape; ``network`` maps L (h x w) to ab."""
    clock = time.perf_counter
    t0 = clock()
    height, width = rgb.shape[:2]
    gray = is_gray(rgb)
    small_l = network_lightness(rgb, (render_size, render_size), bit_depth=bit_depth, gray=gray)
    t1 = clock()
    if ctx is not None:  # rough progress split: the network is most of the work
        ctx.set_progress(0.1)
    ab = network(small_l)
    if ctx is not None:
        ctx.set_progress(0.7)
    t2 = clock()
    a, b = upsample_ab(ab, height, width)
    out = colorize_full_size(rgb, a, b, saturation=saturation, keep_lightness=keep_lightness, gray=gray)
    t3 = clock()
    if timings is not None:
        timings["prepare"] = timings.get("prepare", 0.0) + t1 - t0
        timings["network"] = timings.get("network", 0.0) + t2 - t1
        timings["finish"] = timings.get("finish", 0.0) + t3 - t2
    return out


def decide(picture: Picture) -> ChromaDecision:
    """Auto mode's decision (pure): colour photo or not."""
    return chroma_decision(picture.rgb, picture.alpha)


def make_colorize(models: ColorizeModels):
    def colorize(picture: Picture, params: dict, ctx: StageContext) -> Picture:
        render_size = params["render_size"]
        if render_size % RENDER_MULTIPLE:
            raise InvalidParams(f"parameter 'render_size' must be a multiple of {RENDER_MULTIPLE}, got "
                                f"{render_size}", field="render_size")
        if params["mode"] == "auto":
            decision = decide(picture)
            ctx.set_header(CHROMA_HEADER, decision.header())
            if decision.colour:
                ctx.set_header(DECISION_HEADER, "skipped-colour-photo")
                return picture
            ctx.set_header(DECISION_HEADER, "colorized")
        else:
            ctx.set_header(DECISION_HEADER, "colorized-forced")
        network = models.get(params["model"], ctx)
        ctx.set_header(MODEL_HEADER, params["model"])
        rgb = colorize_array(picture.rgb, network, render_size, params["saturation"], picture.bit_depth,
                             keep_lightness=params["gamut"] == "keep-lightness", ctx=ctx)
        return picture.replace(rgb=rgb)

    return colorize
