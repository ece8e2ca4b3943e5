"""Tone service: levels, dye-fading cast and contrast of faded prints (classical, no model weights)."""
from shared.service import Stage, create_stage_app, run_service

from .stage import PARAMS, tone

STAGE = Stage(name="tone", description="Faded prints: per-channel black/white points, dye-fading colour cast "
              "and contrast, measured and corrected (auto mode leaves unfaded photos untouched)",
              params=PARAMS, run=tone)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.tone.app:app", "tone")
