"""The UI's only way to the service: the gateway's HTTP API (no stage or shared code is imported)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000"
FINAL_STATES = ("done", "failed", "cancelled")


def gateway_url() -> str:
    return os.environ.get("GATEWAY_URL", DEFAULT_GATEWAY_URL).rstrip("/")


class GatewayError(Exception):
    """An error answer from the gateway (its JSON error body), or the gateway being unreachable."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "gateway_error",
                 stage: str | None = None, retry_after: float | None = None, details: dict | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.stage = message, status, code, stage
        self.retry_after = retry_after
        self.details = details or {}

    def describe(self) -> str:
        where = f"stage **{self.stage}**: " if self.stage else ""
        status = f", HTTP {self.status}" if self.status else ""
        return f"{where}{self.message} (`{self.code}`{status})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> "GatewayError":
        try:
            error = response.json()["error"]
            message, code, stage = error.get("message") or response.text, error.get("code", "error"), error.get("stage")
            details = {k: v for k, v in error.items() if k not in ("message", "code", "stage")}
        except (ValueError, KeyError, TypeError):
            message, code, stage, details = response.text[:300] or response.reason_phrase, "http_error", None, {}
        retry = response.headers.get("retry-after")
        return cls(message, status=response.status_code, code=code, stage=stage, details=details,
                   retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


@dataclass
class Result:
    image: bytes
    media_type: str
    headers: dict[str, str]


class Gateway:
    def __init__(self, base_url: str | None = None, timeout: float = 30.0):
        self.base_url = (base_url or gateway_url()).rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=5.0))

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise GatewayError(f"the gateway at {self.base_url} did not answer in time", code="gateway_timeout") from None
        except httpx.TransportError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.base_url} ({type(exc).__name__})",
                               code="gateway_unreachable") from None
        if response.status_code >= 400:
            raise GatewayError.from_response(response)
        return response

    def stages(self) -> dict[str, Any]:
        return self._call("GET", "/v1/stages").json()

    def submit_job(self, image: bytes, filename: str, fields: dict[str, str]) -> dict[str, Any]:
        files = {"image": (filename, image, "application/octet-stream")}
        return self._call("POST", "/v1/jobs", files=files, data=fields).json()

    def decisions(self, image: bytes, filename: str, fields: dict[str, str]) -> dict[str, str]:
        """What the photo-dependent steps would decide for this photo (e.g. {"deblur": "sharp"}), for the
        estimate; an older gateway without the endpoint gives none."""
        files = {"image": (filename, image, "application/octet-stream")}
        try:
            return self._call("POST", "/v1/decisions", files=files, data=fields).json().get("decisions") or {}
        except GatewayError as exc:
            if exc.status in (404, 405):
                return {}
            raise

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def job_result(self, job_id: str) -> Result:
        response = self._call("GET", f"/v1/jobs/{job_id}/result")
        return Result(response.content, response.headers.get("content-type", "image/png"), dict(response.headers))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def finish(self, image: bytes, settings: dict[str, float], fmt: str = "png", quality: int = 92) -> Result:
        data = {k: str(v) for k, v in settings.items()}
        data.update(format=fmt, quality=str(quality))
        response = self._call("POST", "/v1/finish", files={"image": ("result.png", image, "image/png")}, data=data,
                              timeout=httpx.Timeout(300.0, connect=5.0))
        return Result(response.content, response.headers.get("content-type", "image/png"), dict(response.headers))


def simple_fields(colorize: str, upscale: str, tone: str = "auto") -> dict[str, str]:
    return {"mode": "simple", "colorize": colorize, "upscale": upscale, "tone": tone}


def advanced_fields(chain: list[dict[str, Any]]) -> dict[str, str]:
    return {"mode": "advanced", "stages": json.dumps(chain)}
