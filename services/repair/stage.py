"""Repair of damaged prints: find scratches, creases, hairs and dust, and fill them from their surroundings.

Detection (detect.py) works on the luminance; the fill (inpaint.py) re-estimates only the flagged pixels,
so everything else in the photo - alpha, 16-bit precision, EXIF, ICC - comes back untouched.

Modes:
- ``auto``: repairs the components the detector is confident about; when the flagged share is implausibly
  large (the photo's texture rather than damage), it repairs nothing and says so;
- ``force``: repairs every candidate, down to the lower candidate bar;
- ``mask_only``: returns what ``auto`` would repair as a black-and-white PNG of the same size
  (white = defect), for review before repairing.

Response headers: ``X-Repair-Decision`` (JSON: mode, repaired, reason, lines, specks, fraction) and
``X-Repair-Fraction`` (share of the photo's pixels repaired or, for mask_only, flagged).
"""
from __future__ import annotations

import json
import math

import cv2
import numpy as np

from shared.contract import InvalidParams, Param, StageContext
from shared.imaging import Picture, is_grayscale

from .detect import detect
from .inpaint import sparse_fill, telea

PARAMS = (
    Param("mode", "enum", "auto", "auto: repair only what the detector is confident about; force: repair "
          "every candidate; mask_only: return the detected defects as a PNG mask (white = defect)",
          choices=("auto", "force", "mask_only")),
    Param("sensitivity", "float", 0.5, "0-1: higher finds fainter defects (and risks flagging detail)",
          minimum=0.0, maximum=1.0),
    Param("scratches", "bool", True, "look for thin elongated defects: scratches, creases, hairs"),
    Param("dust", "bool", True, "look for small specks: dust, spots"),
    Param("polarity", "enum", "both", "defects brighter than the photo (scraped emulsion, dust on the print), "
          "darker (dirt, dust on the negative), or both", choices=("both", "bright", "dark")),
    Param("method", "enum", "sparse", "fill: 'sparse' (DCT sparse reconstruction, keeps texture) or 'telea' "
          "(OpenCV's diffusion, faster, smooth)", choices=("sparse", "telea")),
)

# auto mode trusts a detection only up to this share of the photo: beyond it, what was found is texture
AUTO_MAX_FRACTION = 0.06
FILL_RIM = np.ones((3, 3), np.uint8)

# Orthonormal opponent transform (rows Y, U, V): detail lives in Y, which gets the texture-keeping fill.
_OPPONENT = np.array([[1 / math.sqrt(3)] * 3,
                      [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                      [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)]], dtype=np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def fill(rgb255: np.ndarray, mask: np.ndarray, method: str = "sparse") -> np.ndarray:
    """``rgb255`` (float32, 8-bit units) with the pixels under ``mask`` filled; other pixels unchanged."""
    mask8 = mask.astype(np.uint8)
    opponent = rgb255 @ _OPPONENT.T
    planes = []
    for index in range(3):
        plane = np.ascontiguousarray(opponent[:, :, index])
        # the colour-difference planes are smooth in photos: diffusion is enough there
        if method == "sparse" and index == 0:
            planes.append(sparse_fill(plane, mask))
        elif index > 0 and np.abs(plane).max() < 1e-3:
            planes.append(plane)          # a grey photo stays exactly grey
        else:
            planes.append(telea(plane, mask8))
    filled = np.stack(planes, axis=2) @ _OPPONENT        # orthonormal: the inverse is the transpose
    out = rgb255.copy()
    out[mask] = filled[mask]
    return out


def repair(picture: Picture, params: dict, ctx: StageContext) -> Picture:
    if not (params["scratches"] or params["dust"]):
        raise InvalidParams("nothing to look for: set 'scratches' or 'dust' to true", field="scratches")
    mode = params["mode"]
    rgb255 = picture.rgb * np.float32(255)
    ctx.progress(0, 3)
    found = detect(rgb255 @ _LUMA, sensitivity=params["sensitivity"], scratches=params["scratches"],
                   dust=params["dust"], polarity=params["polarity"])
    ctx.progress(1, 3)
    ctx.check_aborted()          # the client went away: do not start the fill
    mask = found.candidates if mode == "force" else found.mask
    if picture.alpha is not None:
        mask &= picture.alpha > 0.5          # invisible pixels are not damage
    fraction = float(mask.mean())
    decision = {"mode": mode, "lines": found.counts["lines"], "specks": found.counts["specks"],
                "fraction": round(fraction, 6)}
    if mode == "auto" and fraction > AUTO_MAX_FRACTION:
        decision.update(repaired=False, reason=f"{fraction:.1%} of the photo flagged: more likely texture "
                        "than damage; use mode=force to repair anyway")
        mask = np.zeros_like(mask)
    elif not mask.any():
        decision.update(repaired=False, reason="no defects found")
    else:
        decision.update(repaired=mode != "mask_only", reason="defects found")
    ctx.set_header("X-Repair-Decision", json.dumps(decision))
    ctx.set_header("X-Repair-Fraction", f"{float(mask.mean()):.6f}")
    if mode == "mask_only":
        white = mask.astype(np.float32)
        ctx.progress(3, 3)
        return Picture(rgb=np.repeat(white[:, :, None], 3, axis=2), bit_depth=8)
    if not mask.any():
        ctx.progress(3, 3)
        return picture
    # a defect's faint rim is part of it: fill one pixel beyond what was flagged, or the fill copies the rim
    repaired = fill(rgb255, cv2.dilate(mask.astype(np.uint8), FILL_RIM).astype(bool), params["method"])
    out = np.clip(repaired / np.float32(255), 0.0, 1.0).astype(np.float32)
    if is_grayscale(picture.rgb, tolerance=0.0):
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)   # exactly grey, as it came
    ctx.progress(3, 3)
    return picture.replace(rgb=out)
