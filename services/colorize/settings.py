"""Colorize service configuration (environment variables, validated at start)."""
from __future__ import annotations

from pydantic import Field

from shared.settings import StageSettings


class ColorizeSettings(StageSettings):
    colorize_threads: int | None = Field(None, ge=1, le=256, description="torch threads")
    colorize_cpu_bf16: bool = Field(False, description="run the network in bf16 on the CPU")
