"""Denoise service: classical, soft, detail-keeping."""
from shared.service import Stage, create_stage_app, run_service

from .stage import PARAMS, denoise

STAGE = Stage(name="denoise", description="Non-local-means denoise tuned by the estimated noise level",
              params=PARAMS, run=denoise)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.denoise.app:app", "denoise")
