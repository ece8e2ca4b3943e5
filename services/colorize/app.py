"""Colorize service: Zhang et al. ECCV16 (default) / SIGGRAPH17, full-resolution output (L kept)."""
from shared.service import Stage, create_stage_app, run_service
from shared.settings import cached_settings

from .models import ColorizeModels
from .stage import PARAMS, make_colorize
from .settings import ColorizeSettings

# validated before anything else: a bad variable stops the service with a message naming it
SETTINGS = cached_settings(ColorizeSettings)
MODELS = ColorizeModels()
STAGE = Stage(settings=SETTINGS, name="colorize",
              description="Colorize black-and-white photos (Zhang et al. ECCV16 / SIGGRAPH17); the network "
                          "predicts colour at its render size, the full-resolution lightness is kept; auto "
                          "mode leaves real colour photos untouched",
              params=PARAMS, run=make_colorize(MODELS), models=MODELS.status, needs_model=True,
              extra_info=lambda: {"decision_header": "X-Colorize-Decision"})
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.colorize.app:app", "colorize")
