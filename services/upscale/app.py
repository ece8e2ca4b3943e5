"""Upscale service: Real-ESRGAN (RRDBNet / SRVGGNetCompact) x2..x8 and same-size enhance, tiled."""
from shared.service import Stage, create_stage_app, run_service
from shared.settings import cached_settings

from .settings import UpscaleSettings
from .stage import MAX_OUTPUT_ENV, PARAMS, REGISTRY, max_output_pixels, upscale

# validated before anything else: a bad variable stops the service with a message naming it
SETTINGS = cached_settings(UpscaleSettings)
STAGE = Stage(
    settings=SETTINGS, name="upscale",
    description="Real-ESRGAN super-resolution: exact scale in (1, 8], same-size enhance, alpha/16-bit/grey kept",
    params=PARAMS, run=upscale, models=REGISTRY.status, needs_model=True,
    extra_info=lambda: {"max_output_pixels": max_output_pixels(), "max_output_pixels_env": MAX_OUTPUT_ENV})
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.upscale.app:app", "upscale")
