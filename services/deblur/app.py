"""Deblur service: MAXIM-3S (GoPro) or DeblurGAN-v2 (FPN-MobileNet / FPN-Inception), tiled."""
from shared.service import Stage, create_stage_app, run_service
from shared.settings import cached_settings

from .models import DeblurModels
from .stage import PARAMS, decision_for, make_deblur
from .settings import DeblurSettings

# validated before anything else: a bad variable stops the service with a message naming it
SETTINGS = cached_settings(DeblurSettings)
MODELS = DeblurModels()
STAGE = Stage(settings=SETTINGS, name="deblur",
              description="Motion / defocus deblurring with MAXIM-3S (GoPro) or DeblurGAN-v2, tiled",
              params=PARAMS, run=make_deblur(MODELS), models=MODELS.status, needs_model=True,
              decide=decision_for)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.deblur.app:app", "deblur")
