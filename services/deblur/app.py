"""Deblur service: MAXIM-3S (GoPro) or DeblurGAN-v2 (FPN-MobileNet / FPN-Inception), tiled."""
from shared.service import Stage, create_stage_app, run_service

from .models import DeblurModels
from .stage import PARAMS, make_deblur

MODELS = DeblurModels()
STAGE = Stage(name="deblur",
              description="Motion / defocus deblurring with MAXIM-3S (GoPro) or DeblurGAN-v2, tiled",
              params=PARAMS, run=make_deblur(MODELS), models=MODELS.status, needs_model=True)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.deblur.app:app", "deblur")
