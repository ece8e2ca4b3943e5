"""Colorize service configuration (environment variables, validated at start)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings import ModelStageSettings


class ColorizeSettings(ModelStageSettings):
    colorize_threads: int | None = Field(None, ge=1, le=256, description="torch threads")
    colorize_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="torch device")
    colorize_precision: Literal["auto", "fp32", "bf16", "mixed", "fp16"] = "auto"
    colorize_default_model: str | None = Field(None, description="model used when a request names none")
