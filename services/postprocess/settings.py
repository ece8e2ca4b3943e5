"""Postprocess service configuration (environment variables, validated at start)."""
from __future__ import annotations

from pydantic import Field

from shared.settings import StageSettings


class PostprocessSettings(StageSettings):
    # It runs after upscale, so its input may be up to 16x the user's pixel limit (x4).
    postprocess_max_pixels: int | None = Field(None, gt=0, description="largest input; default 16 x MAX_PIXELS")

    def input_pixel_limit(self) -> int:
        return self.postprocess_max_pixels or self.max_pixels * 16
