"""Denoise service: classical, soft, detail-keeping."""
from shared.service import Stage, create_stage_app, run_service
from shared.settings import cached_settings

from .stage import PARAMS, denoise
from .settings import DenoiseSettings

# validated before anything else: a bad variable stops the service with a message naming it
SETTINGS = cached_settings(DenoiseSettings)
STAGE = Stage(settings=SETTINGS, name="denoise", description="Classical soft denoise: overlapping-DCT shrinkage with a Wiener pass in opponent colour space, "
              "strength set per colour plane from the estimated noise level (clean photos are left alone)",
              params=PARAMS, run=denoise)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.denoise.app:app", "denoise")
