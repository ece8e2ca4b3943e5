"""Postprocess service: post-denoise blur and unsharp-mask sharpening."""
import os

from shared.service import Stage, create_stage_app, run_service

from .stage import PARAMS, postprocess

# It runs after upscale, so its input may be up to 16x the user's pixel limit (x4).
STAGE = Stage(name="postprocess", description="Light Gaussian blur (post-denoise) and unsharp mask",
              params=PARAMS, run=postprocess,
              max_input_pixels=lambda: int(os.environ.get("POSTPROCESS_MAX_PIXELS",
                                                          int(os.environ.get("MAX_PIXELS", 2_000_000)) * 16)))
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.postprocess.app:app", "postprocess")
