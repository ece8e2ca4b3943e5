"""What the people restoring photos read: stage names, skipped stages and errors in plain words.

Technical details (model names, fetch commands, error codes) belong in the Server panel or a "Details"
expander, never in these sentences.
"""
from __future__ import annotations

# step -> (what it is called, what the photo looks like without it)
STAGE_WORDS: dict[str, tuple[str, str]] = {
    "denoise": ("Noise reduction", "grain and noise were left as they are"),
    "deblur": ("Blur removal", "blur in the photo was left as it is"),
    "colorize": ("Colorization", "the photo was left in black and white"),
    "upscale": ("Enlarging", "the photo keeps its original size"),
    "post-denoise": ("Final smoothing", "the photo was not smoothed at the end"),
    "sharpen": ("Final sharpening", "the photo was not sharpened at the end"),
    "postprocess": ("Final smoothing and sharpening", "the photo was not smoothed or sharpened at the end"),
    "tone": ("Tone and contrast correction", "faded contrast and colour casts were left as they are"),
    "repair": ("Scratch and dust repair", "scratches and dust marks were left as they are"),
}
COLOUR_PHOTO_WITHOUT_COLORIZE = "the photo keeps its own colours"

ERROR_WORDS = {   # error code -> sentence (the details stay in the Details expander)
    "corrupt_image": "This file could not be read as a photo: it may be damaged or only partly uploaded.",
    "empty_image": "This file is empty.",
    "unsupported_media_type": "This file is not a photo this service can read (use JPEG or PNG).",
    "image_too_large": "This photo is too large for this server.",
    "missing_image": "No photo was sent.",
    "queue_full": "The server is busy with other photos; try again in a minute.",
    "stage_timeout": "A step took too long and was stopped.",
    "stage_unreachable": "Part of the server is not running right now; try again later.",
    "gateway_unreachable": "The restoration server cannot be reached right now.",
    "gateway_timeout": "The restoration server did not answer in time.",
    "model_unavailable": "A step this restore needs is not installed on this server.",
    "invalid_params": "One of the settings is not accepted.",
}


def stage_name(step: str) -> str:
    return STAGE_WORDS.get(step, (step.replace("-", " ").capitalize(), ""))[0]


def skipped_sentence(step: str, code: str = "model_unavailable", *, grayscale: bool | None = None) -> str:
    """Why a step did not run and what that means for the photo, e.g. "Colorization is not installed on
    this server, so the photo was left in black and white"."""
    name, consequence = STAGE_WORDS.get(step, (stage_name(step), "this step was skipped"))
    if step == "colorize" and grayscale is False:
        consequence = COLOUR_PHOTO_WITHOUT_COLORIZE
    if code in ("stage_unreachable", "down"):
        return f"{name} is not running on this server right now, so {consequence}."
    return f"{name} is not installed on this server, so {consequence}."


def skipped_code(entry: dict) -> str:
    """The reason code of a job's skipped entry (today the gateway skips only for a missing model)."""
    return entry.get("code") or "model_unavailable"


def error_sentence(code: str | None, message: str = "", stage: str | None = None) -> str:
    """A failed restore in plain words; ``message`` is used only where it is already written for people."""
    if code in ERROR_WORDS:
        text = ERROR_WORDS[code]
    elif code == "invalid_params" or (code or "").startswith("invalid"):
        text = "One of the settings is not accepted."
    else:
        text = "Something went wrong on the server."
    if stage and code not in ("corrupt_image", "empty_image", "unsupported_media_type", "image_too_large"):
        text = f"{stage_name(stage)} failed. " + text
    return text


def missing_steps_note(steps: list[str]) -> str:
    """Before a run: which chosen steps this server cannot do, in one sentence."""
    names = [stage_name(s).lower() for s in steps]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if len(names) == 1 else "are"
    return f"On this server {listed} {verb} not installed; those steps will be skipped."


DECISION_WORDS = {   # (step, decision) -> what the step will do with this photo
    ("deblur", "sharp"): "This photo looks sharp, so blur removal will leave it as it is.",
    ("deblur", "defocus"): "This photo looks out of focus; blur removal will sharpen it (a quick step).",
    ("deblur", "motion"): "This photo looks shaken (motion blur); blur removal will take most of the time.",
}


def decision_sentences(decisions: dict[str, str]) -> list[str]:
    """Before a run: what the photo-dependent steps will do with this photo, in plain words."""
    return [DECISION_WORDS[(step, decision)] for step, decision in decisions.items()
            if (step, decision) in DECISION_WORDS]
