"""Postprocess service: post-denoise blur and unsharp-mask sharpening."""
from shared.service import Stage, create_stage_app, run_service
from shared.settings import cached_settings

from .settings import PostprocessSettings
from .stage import PARAMS, postprocess

# validated before anything else: a bad variable stops the service with a message naming it
SETTINGS = cached_settings(PostprocessSettings)

STAGE = Stage(settings=SETTINGS, name="postprocess", description="Light Gaussian blur (post-denoise) and unsharp mask",
              params=PARAMS, run=postprocess)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.postprocess.app:app", "postprocess")
