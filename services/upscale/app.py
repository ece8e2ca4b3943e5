"""upscale service (model implementation pending: answers 503 until its weights and model code exist)."""
from shared.contract import ModelUnavailable
from shared.service import Stage, create_stage_app, run_service


def _unavailable(picture, params, ctx):
    raise ModelUnavailable("upscale", "python -m services.upscale.fetch", reason="model code is not installed yet")


STAGE = Stage(name="upscale", description="upscale (not yet implemented)", params=(), run=_unavailable,
              models=lambda: {}, needs_model=True)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.upscale.app:app", "upscale")
