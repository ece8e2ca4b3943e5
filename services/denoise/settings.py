"""Denoise service configuration (environment variables, validated at start)."""
from __future__ import annotations

import os

from pydantic import Field

from shared.settings import StageSettings


class DenoiseSettings(StageSettings):
    denoise_threads: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=256,
                                 description="worker threads per colour plane")
