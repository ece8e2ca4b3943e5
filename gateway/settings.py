"""Gateway configuration: one typed class, read from environment variables and validated at start.

The job queue's own settings (Redis, queue size, result TTL) are ``gateway.jobs_store.JobSettings``.
"""
from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from shared.contract import DEFAULT_PORTS, STAGE_NAMES
from shared.settings import DEFAULT_MAX_PIXELS, ServiceSettings, load_settings, upload_limit_for


def _default_url(name: str) -> str:
    return f"http://127.0.0.1:{DEFAULT_PORTS[name]}"


class Settings(ServiceSettings):
    # Each may list several replicas, comma-separated, or name a host that resolves to several addresses
    # (gateway/balancer.py spreads requests over them).
    denoise_url: str = Field(_default_url("denoise"))
    deblur_url: str = Field(_default_url("deblur"))
    colorize_url: str = Field(_default_url("colorize"))
    upscale_url: str = Field(_default_url("upscale"))
    postprocess_url: str = Field(_default_url("postprocess"))
    repair_url: str = Field(_default_url("repair"))
    tone_url: str = Field(_default_url("tone"))
    # Model stages can take minutes on a CPU for large photos; classical ones never should.
    stage_timeout_s: float = Field(900, gt=0, description="read timeout of a stage's /process")
    denoise_timeout_s: float | None = Field(None, gt=0)
    deblur_timeout_s: float | None = Field(None, gt=0)
    colorize_timeout_s: float | None = Field(None, gt=0)
    upscale_timeout_s: float | None = Field(None, gt=0)
    postprocess_timeout_s: float | None = Field(None, gt=0)
    repair_timeout_s: float | None = Field(None, gt=0)
    tone_timeout_s: float | None = Field(None, gt=0)
    stage_connect_timeout_s: float = Field(3, gt=0)
    stage_retry_attempts: int = Field(3, ge=1, le=10)
    stage_retry_max_wait_s: float = Field(2, ge=0)
    # A stage silent this long on /health or /info is reported down (the Docker healthcheck allows 5 s).
    stage_health_timeout_s: float = Field(1.0, gt=0, le=10)
    stage_info_cache_s: float = Field(30, ge=0, description="how long a stage's /info is reused")
    # How often a stage host name listing several replicas is resolved again (gateway/balancer.py).
    stage_resolve_interval_s: float = Field(10, gt=0)
    # "raster": the cheap lossless raster transport between stages; "png": PNG on every hop
    stage_transport: Literal["raster", "png"] = "raster"
    # consecutive steps one service runs in one call (post-denoise then sharpen) go to it as one call
    fuse_steps: bool = True
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0, description="largest request body (/v1/finish); "
                                  "the chain endpoints take at most what an image of MAX_PIXELS can need")
    finish_max_pixels: int | None = Field(None, gt=0, description="default: the largest chain result")
    # Memory the gateway may spend on /v1/finish requests at once; it sets how many run concurrently.
    finish_memory_budget_mb: int = Field(600, ge=64)

    @field_validator(*(f"{name}_url" for name in STAGE_NAMES), mode="after")
    @classmethod
    def _base_urls(cls, value: str) -> str:
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("give at least one stage URL")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL")
            if parts.path not in ("", "/") or parts.query:
                raise ValueError("give the stage's base URL (scheme, host, port) without a path")
        return ",".join(u.rstrip("/") for u in urls)

    @classmethod
    def from_env(cls) -> "Settings":
        return load_settings(cls)

    @property
    def service_urls(self) -> dict[str, str]:
        return {name: getattr(self, f"{name}_url") for name in STAGE_NAMES}

    @property
    def stage_timeouts(self) -> dict[str, float]:
        return {name: getattr(self, f"{name}_timeout_s") or self.stage_timeout_s for name in STAGE_NAMES}

    @property
    def connect_timeout(self) -> float:
        return self.stage_connect_timeout_s

    @property
    def retry_attempts(self) -> int:
        return self.stage_retry_attempts

    @property
    def retry_max_wait(self) -> float:
        return self.stage_retry_max_wait_s

    @property
    def info_cache_ttl(self) -> float:
        return self.stage_info_cache_s

    @property
    def resolve_interval(self) -> float:
        return self.stage_resolve_interval_s

    @property
    def input_upload_limit(self) -> int:
        """Body limit of /v1/restore, /v1/pipeline and /v1/jobs: an honest MAX_PIXELS image never needs more."""
        return min(self.max_upload_bytes, upload_limit_for(self.max_pixels))

    @property
    def largest_result_pixels(self) -> int:
        # the largest output a chain produces: an input at the pixel limit upscaled x4
        return self.max_pixels * 16

    @property
    def finish_pixel_limit(self) -> int:
        return self.finish_max_pixels or self.largest_result_pixels
