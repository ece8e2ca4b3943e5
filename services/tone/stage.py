"""Tone stage: undo the fading of an old print (lifted blacks, dull whites, dye-fading colour cast, low
contrast). ``mode=auto`` returns the photo unchanged unless the measurements say it is faded (or, for a
black-and-white print, tinted by yellowed paper)."""
from __future__ import annotations

from shared.contract import Param, StageContext
from shared.imaging import Picture

from .analysis import (LOW_CONTRAST_L_STD, analysis_copy, apply_luts, correction_luts, decision_header, lab_of,
                       local_contrast, measure_copy, visible_pixels)

DECISION_HEADER = "X-Tone-Decision"

PARAMS = (
    Param("strength", "float", 1.0, "how much of the measured correction is applied: 0 = none, 1 = all",
          minimum=0.0, maximum=1.0),
    Param("cast", "bool", True, "correct the colour cast (per-channel white balance and dye-fading curves; "
          "a black-and-white print becomes neutral grey); off: the least-faded channel's curve for all "
          "channels, so colours and tints keep their balance"),
    Param("contrast", "float", 0.5, "local contrast (CLAHE on lightness, low clip limit) added where the "
          "photo is still flat after levels: 0 = none, 1 = most", minimum=0.0, maximum=1.0),
    Param("mode", "enum", "auto", "auto: correct only a photo measured as faded (lifted blacks or dull "
          "whites) or a black-and-white print with a tint; return any other unchanged; force: always correct",
          choices=("auto", "force")),
)


def tone(picture: Picture, params: dict, ctx: StageContext) -> Picture:
    small, small_alpha = analysis_copy(picture.rgb, picture.alpha)
    m = measure_copy(small, small_alpha)
    force = params["mode"] == "force"
    if not m.measurable:   # a flat picture (one colour, a 1-pixel image) has no black and white to read
        ctx.set_header(DECISION_HEADER, decision_header(m, "unchanged-no-tonal-range", {}))
        return picture
    if not force and not (m.faded or (params["cast"] and m.cast and m.monochrome)):
        ctx.set_header(DECISION_HEADER, decision_header(m, "unchanged", {}))
        return picture
    ctx.set_progress(0.3)
    ctx.check_aborted()   # the client may have gone while we measured: skip the full-size work
    strength = params["strength"]
    correct_cast = params["cast"]
    luts = correction_luts(m, strength, correct_cast)
    to_grey = m.monochrome and correct_cast
    rgb = apply_luts(picture.rgb, luts, to_grey)
    ctx.set_progress(0.8)
    # local contrast only where levels alone left the photo flat (measured on the corrected analysis copy)
    l_std = float(lab_of(visible_pixels(apply_luts(small, luts, to_grey), small_alpha))[:, 0].std())
    local = params["contrast"] * strength if l_std < LOW_CONTRAST_L_STD else 0.0
    if local > 0:
        rgb = local_contrast(rgb, local, to_grey)
    applied = {"strength": strength, "cast": correct_cast, "local_contrast": round(local, 3),
               "l_std_after": round(l_std, 2)}
    ctx.set_header(DECISION_HEADER, decision_header(m, "corrected-forced" if force else "corrected", applied))
    return picture.replace(rgb=rgb)
