"""Denoise service: classical, soft, detail-keeping."""
from shared.service import Stage, create_stage_app, run_service

from .stage import PARAMS, denoise

STAGE = Stage(name="denoise", description="Classical soft denoise: overlapping-DCT shrinkage with a Wiener pass in opponent colour space, "
              "strength set per colour plane from the estimated noise level (clean photos are left alone)",
              params=PARAMS, run=denoise)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.denoise.app:app", "denoise")
