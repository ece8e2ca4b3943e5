"""colorize service (model implementation pending: answers 503 until its weights and model code exist)."""
from shared.contract import ModelUnavailable
from shared.service import Stage, create_stage_app, run_service


def _unavailable(picture, params, ctx):
    raise ModelUnavailable("colorize", "python -m services.colorize.fetch", reason="model code is not installed yet")


STAGE = Stage(name="colorize", description="colorize (not yet implemented)", params=(), run=_unavailable,
              models=lambda: {}, needs_model=True)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.colorize.app:app", "colorize")
