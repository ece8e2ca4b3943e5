"""``mode=auto``: measure the photo's blur, then skip it, deconvolve it, or hand it to the network.

sharp   -> the photo unchanged (the decision costs a few OpenCV passes);
defocus -> Wiener deconvolution with the estimated Gaussian PSF: on bench/blur_decision.py's defocus set
           it gains more than MAXIM (trained on motion blur, GoPro) and takes a fraction of a second;
motion  -> the network, its strength following the measured blur width.
The decision and its measurements are sent back in X-Deblur-Decision and X-Deblur-Blur (JSON).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.contract import StageContext
from shared.imaging import Picture

from .blur_estimate import DEFOCUS, MOTION, SHARP, BlurEstimate, deconvolution_regularisation, estimate_blur
from .deconvolve import REGULARISATION_CLEAN, REGULARISATION_JPEG, deconvolve_gaussian

DECISION_HEADER = "X-Deblur-Decision"
BLUR_HEADER = "X-Deblur-Blur"
METHOD_HEADER = "X-Deblur-Method"


@dataclass(frozen=True)
class AutoOutcome:
    estimate: BlurEstimate
    result: Picture | None        # the finished picture (sharp, defocus), or None: run the network
    network_strength: float = 0.0  # for motion: the strength to run the network with


def deconvolve_defocus(picture: Picture, estimate: BlurEstimate, strength: float) -> Picture:
    regularisation = deconvolution_regularisation(estimate, REGULARISATION_CLEAN, REGULARISATION_JPEG)
    rgb = picture.rgb
    restored = deconvolve_gaussian(rgb, estimate.defocus_sigma, regularisation)
    if strength < 1.0:
        restored = rgb + np.float32(strength) * (restored - rgb)
    return picture.replace(rgb=np.clip(restored, 0.0, 1.0).astype(np.float32))


def decide(picture: Picture, strength: float, ctx: StageContext) -> AutoOutcome:
    """The auto decision for ``picture``; sets the decision headers on ``ctx``."""
    estimate = estimate_blur(picture.rgb, picture.alpha)
    ctx.decision = estimate.kind
    ctx.set_header(DECISION_HEADER, estimate.kind)
    ctx.set_header(BLUR_HEADER, estimate.header())
    if estimate.kind == SHARP or strength == 0.0:
        ctx.set_header(METHOD_HEADER, "none")
        return AutoOutcome(estimate, picture)
    if estimate.kind == DEFOCUS:
        ctx.set_header(METHOD_HEADER, "wiener-gaussian")
        return AutoOutcome(estimate, deconvolve_defocus(picture, estimate, strength))
    assert estimate.kind == MOTION
    ctx.set_header(METHOD_HEADER, "network")
    return AutoOutcome(estimate, None, strength * estimate.strength)
