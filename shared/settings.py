"""Typed configuration from environment variables, one pydantic-settings class per service.

Each service subclasses ``StageSettings`` (the gateway has its own class) and loads it once at start with
``load_settings``: a bad value stops the service with a message naming the variable, instead of failing on
the first request that happens to read it.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MAX_PIXELS = 2_000_000
# Largest encoded size of one pixel we accept (16-bit RGBA PNG stored uncompressed), plus room for metadata.
BYTES_PER_PIXEL_BOUND = 8
UPLOAD_METADATA_ALLOWANCE = 16 * 1024 * 1024


class ServiceSettings(BaseSettings):
    """What every service process reads: where it listens and how it logs."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="interface `python -m <service>` listens on")
    port: int | None = Field(None, ge=1, le=65535, description="port (default: the service's own)")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug|trace)$")
    heap_keep_mb: int = Field(512, ge=0, le=2047, description="freed memory kept for the next request instead "
                              "of returned to the kernel (glibc; shared/heap.py); 0 = the C library's default")
    heap_large_blocks: Literal["mmap", "heap"] = Field(
        "mmap", description="blocks over 32 MB: mapped each time (the C library's default) or served from the "
        "heap and reused (shared/heap.py)")


class StageSettings(ServiceSettings):
    """Settings shared by every stage service."""

    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="largest input image, in pixels")
    max_upload_bytes: int | None = Field(None, gt=0, description="largest /process body; default from the "
                                         "stage's pixel limit")
    stage_concurrency: int = Field(1, ge=1, le=64, description="requests processed at once")
    restore_model_dir: Path | None = Field(None, description="model cache directory")

    def input_pixel_limit(self) -> int:
        return self.max_pixels

    def upload_limit(self) -> int:
        return self.max_upload_bytes or upload_limit_for(self.input_pixel_limit())


class ModelStageSettings(StageSettings):
    """A stage that runs a network. Its tensors come and go in hundreds of MB: freed memory goes back to the
    kernel (the C library's default policy), and the memory figures in bench/ and deploy/ were measured so."""

    heap_keep_mb: int = Field(0, ge=0, le=2047, description=ServiceSettings.model_fields["heap_keep_mb"].description)


def upload_limit_for(max_pixels: int) -> int:
    """A body limit no honest image within ``max_pixels`` reaches (PNG never grows much past raw size)."""
    return max_pixels * BYTES_PER_PIXEL_BOUND + UPLOAD_METADATA_ALLOWANCE


S = TypeVar("S", bound=BaseSettings)


class ConfigurationError(SystemExit):
    """Raised at import time: uvicorn and ``python -m`` print it and the process exits with status 1."""


def load_settings(cls: type[S]) -> S:
    try:
        return cls()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                             f" (got {str(err.get('input'))[:40]!r})" for err in exc.errors())
        raise ConfigurationError(f"invalid configuration for {cls.__name__}: {problems}") from None


@functools.cache
def cached_settings(cls: type[S]) -> S:
    """The one validated instance of ``cls`` in this process."""
    return load_settings(cls)
