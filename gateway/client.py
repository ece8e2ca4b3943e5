"""HTTP calls from the gateway to the stage services: pooled client, retries, timeouts, errors named by stage."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from shared.contract import StageError
from shared.imaging import PNG_MEDIA_TYPE, RASTER_MEDIA_TYPE

from .balancer import Replica, ReplicaSet
from .settings import Settings

# Errors where the request never reached a working stage or the stage died while serving it: safe to retry,
# because /process has no side effects.
RETRYABLE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
                              httpx.ReadError, httpx.WriteError, httpx.PoolTimeout)


class RetryableStatus(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _should_retry(exc: BaseException) -> bool:
    return isinstance(exc, RETRYABLE_TRANSPORT_ERRORS + (RetryableStatus,))


# What the gateway asks a stage to answer in: the raster transport between stages (a copy instead of a PNG
# encode and decode per hop), PNG when the answer goes straight to the user.
ACCEPT_RASTER = f"{RASTER_MEDIA_TYPE}, {PNG_MEDIA_TYPE};q=0.5"
ACCEPT_PNG = PNG_MEDIA_TYPE


@dataclass
class StageResult:
    image: bytes
    media_type: str            # PNG_MEDIA_TYPE or RASTER_MEDIA_TYPE
    gateway_ms: float          # wall time seen by the gateway, transfers and retries included
    stage_ms: float | None     # the stage's own X-Process-Time-Ms
    headers: dict[str, str]


class StageClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self._info_cache: dict[str, tuple[float, dict]] = {}
        self.replicas = {name: ReplicaSet(spec, resolve_interval=settings.resolve_interval)
                         for name, spec in settings.service_urls.items()}
        # request id -> the replica serving it, so that its progress is asked of the same replica
        self._serving: dict[str, Replica] = {}

    async def close(self) -> None:
        await self.http.aclose()

    def _timeout(self, service: str) -> httpx.Timeout:
        return httpx.Timeout(self.settings.stage_timeouts[service], connect=self.settings.connect_timeout)

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(stop=stop_after_attempt(self.settings.retry_attempts),
                             wait=wait_exponential(multiplier=0.2, max=self.settings.retry_max_wait),
                             retry=retry_if_exception(_should_retry), reraise=True)

    async def process(self, service: str, image: bytes, params: dict, request_id: str | None = None, *,
                      media_type: str = PNG_MEDIA_TYPE, final: bool = True) -> StageResult:
        """POST to one replica per attempt; a replica that failed is not tried again by the same request.

        ``request_id`` goes out as X-Request-Id so that ``progress`` can ask the stage how far it is. Cancelling
        the calling task closes the connection, which is the stage's signal to stop working. ``media_type``
        labels ``image``. A ``final`` answer (the one the user gets) is PNG; an intermediate one comes in the
        raster transport unless settings say PNG.
        """
        replicas = self.replicas[service]
        tried: set[str] = set()
        accept = ACCEPT_PNG if final or self.settings.stage_transport == "png" else ACCEPT_RASTER
        headers = {"Accept": accept}
        if request_id:
            headers["X-Request-Id"] = request_id
        filename = "image.raw" if media_type == RASTER_MEDIA_TYPE else "image.png"
        started = time.perf_counter()
        url = replicas.urls[0] + "/process"
        try:
            async for attempt in self._retrying():
                with attempt:
                    replica = replicas.acquire(exclude=tried)
                    tried.add(replica.url)
                    url = replica.url + "/process"
                    if request_id:
                        self._serving[request_id] = replica
                    try:
                        response = await self.http.post(
                            url, files={"image": (filename, image, media_type)},
                            data={"params": json.dumps(params)}, headers=headers, timeout=self._timeout(service))
                    except httpx.TransportError:
                        replicas.release(replica, failed=True)
                        raise
                    except BaseException:  # cancelled by the caller: the replica did nothing wrong
                        replicas.release(replica)
                        raise
                    failed = response.status_code >= 500 and response.status_code != 503
                    replicas.release(replica, failed=failed)
                    if failed:
                        raise RetryableStatus(response)
        except RetryableStatus as exc:
            raise _stage_failure(service, exc.response) from None
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise StageError(f"stage '{service}' is unreachable at {url}", code="stage_unreachable",
                                 status=502, stage=service) from None
            raise StageError(f"stage '{service}' did not answer within {self.settings.stage_timeouts[service]:.0f}"
                             " s", code="stage_timeout", status=504, stage=service) from None
        except httpx.TransportError as exc:
            raise StageError(f"stage '{service}' is unreachable or failed mid-request ({type(exc).__name__})",
                             code="stage_unreachable", status=502, stage=service) from None
        finally:
            if request_id:
                self._serving.pop(request_id, None)
        gateway_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise _stage_failure(service, response)
        stage_ms = response.headers.get("x-process-time-ms")
        answered = response.headers.get("content-type", PNG_MEDIA_TYPE).split(";")[0].strip().lower()
        return StageResult(response.content, answered, gateway_ms, float(stage_ms) if stage_ms else None,
                           dict(response.headers))

    async def progress(self, request_id: str) -> float | None:
        """The stage's own progress (0..1) of a request in flight; None when the stage does not report it."""
        replica = self._serving.get(request_id)
        if replica is None:
            return None
        try:
            response = await self.http.get(f"{replica.url}/progress/{request_id}",
                                           timeout=httpx.Timeout(2, connect=self.settings.connect_timeout))
            if response.status_code != 200:
                return None
            answer = response.json()
            return float(answer["progress"]) if answer.get("state") == "running" else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def get_json(self, service: str, path: str) -> dict:
        replica = self.replicas[service].acquire()
        self.replicas[service].release(replica)  # a short read: balanced, but not counted as load
        url = replica.url + path
        try:
            response = await self.http.get(url, timeout=httpx.Timeout(10, connect=self.settings.connect_timeout))
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise StageError(f"stage '{service}' is unreachable at {url} ({type(exc).__name__})",
                             code="stage_unreachable", status=502, stage=service) from None

    async def info(self, service: str) -> dict:
        cached = self._info_cache.get(service)
        if cached and time.monotonic() - cached[0] < self.settings.info_cache_ttl:
            return cached[1]
        info = await self.get_json(service, "/info")
        self._info_cache[service] = (time.monotonic(), info)
        return info


def _stage_failure(service: str, response: httpx.Response) -> StageError:
    """Turn a stage's non-200 answer into a gateway error that keeps its status, code and message."""
    try:
        error = response.json()["error"]
        code, message = error.get("code", "stage_error"), error.get("message", response.text)
        extra = {k: v for k, v in error.items() if k not in ("code", "message", "stage")}
    except (ValueError, KeyError, TypeError):
        code, message, extra = "stage_error", response.text[:500], {}
    status = response.status_code if response.status_code < 500 or response.status_code == 503 else 502
    return StageError(f"stage '{service}': {message}", code=code, status=status, stage=service, details=extra)
