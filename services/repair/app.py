"""Repair service: finds scratches, creases, hairs and dust on a damaged print and fills them."""
from shared.service import Stage, create_stage_app, run_service

from .stage import PARAMS, repair

STAGE = Stage(name="repair", description="Classical damage repair: scratches, creases and hairs (oriented line "
              "filters on a morphological top-hat) and dust specks found with local-texture thresholds, then "
              "filled by sparse DCT reconstruction; mode=mask_only returns the detected mask",
              params=PARAMS, run=repair)
app = create_stage_app(STAGE)

if __name__ == "__main__":
    run_service("services.repair.app:app", "repair")
