"""Gateway configuration, all from environment variables (compose sets the service URLs)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from shared.contract import DEFAULT_PORTS, STAGE_NAMES
from shared.imaging import DEFAULT_MAX_PIXELS


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _transport(value: str) -> str:
    if value not in ("raster", "png"):
        raise ValueError(f"STAGE_TRANSPORT must be raster or png, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    service_urls: dict[str, str]
    stage_timeouts: dict[str, float]
    connect_timeout: float
    retry_attempts: int
    retry_max_wait: float
    max_pixels: int
    finish_max_pixels: int
    info_cache_ttl: float = 30.0
    # How often a stage host name listing several replicas is resolved again (gateway/balancer.py).
    resolve_interval: float = 10.0
    # "raster": the cheap lossless raster transport between stages; "png": PNG on every hop (as before)
    stage_transport: str = "raster"

    @classmethod
    def from_env(cls) -> "Settings":
        urls = {name: os.environ.get(f"{name.upper()}_URL", f"http://127.0.0.1:{DEFAULT_PORTS[name]}").rstrip("/")
                for name in STAGE_NAMES}
        # Model stages can take minutes on a CPU for large photos; classical ones never should.
        default_timeout = _float("STAGE_TIMEOUT_S", 900)
        timeouts = {name: _float(f"{name.upper()}_TIMEOUT_S", default_timeout) for name in STAGE_NAMES}
        max_pixels = _int("MAX_PIXELS", DEFAULT_MAX_PIXELS)
        return cls(service_urls=urls, stage_timeouts=timeouts,
                   connect_timeout=_float("STAGE_CONNECT_TIMEOUT_S", 3),
                   retry_attempts=_int("STAGE_RETRY_ATTEMPTS", 3),
                   retry_max_wait=_float("STAGE_RETRY_MAX_WAIT_S", 2),
                   max_pixels=max_pixels,
                   finish_max_pixels=_int("FINISH_MAX_PIXELS", max_pixels * 16),
                   info_cache_ttl=_float("STAGE_INFO_CACHE_S", 30),
                   resolve_interval=_float("STAGE_RESOLVE_INTERVAL_S", 10),
                   stage_transport=_transport(os.environ.get("STAGE_TRANSPORT", "raster")))
