"""Deblur service configuration (environment variables, validated at start)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.settings import ModelStageSettings


class DeblurSettings(ModelStageSettings):
    # Blocks over 32 MB come from the heap, not from a fresh mapping per layer (MAXIM's runner trims the heap
    # between blocks; shared/heap.py; bench/deblur.py measures it as served).
    heap_large_blocks: Literal["mmap", "heap"] = "heap"
    deblur_threads: int | None = Field(None, ge=1, le=256, description="ONNX Runtime / torch threads")
    deblur_device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="torch device")
    deblur_precision: Literal["auto", "fp32", "bf16", "mixed", "fp16"] = "auto"
    deblur_default_model: str | None = Field(None, description="model used when a request names none")
    deblur_tile: int | None = Field(None, ge=32, le=4096, description="tile side in pixels")
    deblur_tile_context: int | None = Field(None, ge=0, le=512, description="context around each tile")
    deblur_convert_venv: Path | None = Field(None, description="venv of the test-only MAXIM reference (tools/maxim_reference.py)")
    deblur_max_window_pixels: int | None = Field(None, ge=4096, description="largest MAXIM window in pixels (memory vs windows)")
