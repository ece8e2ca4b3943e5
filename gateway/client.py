"""HTTP calls from the gateway to the stage services: pooled client, retries, timeouts, errors named by stage."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from shared.contract import PARAMS_HEADER, StageError
from shared.imaging import PNG_MEDIA_TYPE, RASTER_MEDIA_TYPE, media_type_of, verify_image_answer

from .balancer import Replica, ReplicaSet
from .settings import Settings

log = logging.getLogger("restore.gateway.client")
T = TypeVar("T")

# Statuses of the stage contract whose error body the gateway passes on as its own answer; anything else a
# stage says (a redirect, 401, a 500) is the stage's failure, answered 502 naming it.
PASSED_ON_STATUSES = {400, 413, 415, 422, 503}

# Stage connections idle longer than this are not reused: under the stages' own keep-alive (uvicorn's 5 s),
# so that a request never goes out on a connection the stage is closing at that moment.
KEEPALIVE_S = 3.0
# An answer is read whole: buffered up to about twice this before the connection stops reading (aiohttp's
# 256 KiB default made a 6 MB answer stop and restart reading a dozen times).
READ_BUFFER = 8 << 20
# A check of this many bytes or fewer (a CRC pass over a photo-sized PNG, a header read) runs on the event
# loop: it costs less than sending it to a thread and waking the loop when it is done.
INLINE_CHECK_BYTES = 8 << 20


async def run_check(check: Callable[..., T], *args, size: int) -> T:
    """``check(*args)`` on the event loop when ``size`` (the bytes it reads) is small, else in a thread."""
    if size <= INLINE_CHECK_BYTES:
        return check(*args)
    return await asyncio.to_thread(check, *args)


class StageTransportError(Exception):
    """No usable answer came back from a stage over HTTP (as opposed to an answer that says no)."""


class StageConnectionError(StageTransportError):
    """The request never reached a working stage, or the connection broke while it served it: safe to retry,
    because /process has no side effects."""


class StageConnectTimeout(StageConnectionError):
    pass


class StageReadTimeout(StageTransportError):
    """The stage accepted the request but stayed silent for the stage's timeout."""


@dataclass
class StageAnswer:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes

    def json(self):
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class StageHTTP:
    """The gateway's HTTP client for its stages: aiohttp, whose C parser moves the megabytes of each hop in
    a fraction of the time of a pure-Python one (bench/simple.py, hops). The session is opened on first use,
    inside the event loop that uses it (the worker builds its client before its loop runs)."""

    def __init__(self, max_connections: int = 64):
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=KEEPALIVE_S)
            # The stages' answers are images and JSON as they are: no compression asked for or undone.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("Accept-Encoding",), read_bufsize=READ_BUFFER)
        return self._session

    async def request(self, method: str, url: str, *, read_timeout: float, connect_timeout: float,
                      content: bytes | None = None, headers: dict[str, str] | None = None) -> StageAnswer:
        """One request, its whole answer read; transport failures raised as ``StageTransportError``s.
        ``read_timeout`` bounds each wait for the stage's answer once the request is sent. aiohttp has no
        write timeout, so a stage that never reads the request (its event loop blocked) is bounded by a
        whole-call limit of twice that."""
        timeout = aiohttp.ClientTimeout(total=2 * read_timeout + connect_timeout, sock_connect=connect_timeout,
                                        sock_read=read_timeout)
        try:
            async with self._open().request(method, url, data=content, headers=headers, timeout=timeout) as answer:
                body = await answer.read()
                names: dict[str, str] = {}
                for name, value in answer.headers.items():
                    name = name.lower()
                    names[name] = f"{names[name]}, {value}" if name in names else value
                return StageAnswer(answer.status, names, body)
        except aiohttp.ConnectionTimeoutError as exc:
            raise StageConnectTimeout(repr(exc)) from None
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError) as exc:
            raise StageReadTimeout(repr(exc)) from None
        except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer, not HTTP
            raise StageConnectionError(repr(exc)) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RetryableStatus(Exception):
    def __init__(self, response: StageAnswer):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _should_retry(exc: BaseException) -> bool:
    return isinstance(exc, (StageConnectionError, RetryableStatus))


# What the gateway asks a stage to answer in: the raster transport between stages (a copy instead of a PNG
# encode and decode per hop), PNG when the answer goes straight to the user.
ACCEPT_RASTER = f"{RASTER_MEDIA_TYPE}, {PNG_MEDIA_TYPE};q=0.5"
ACCEPT_PNG = PNG_MEDIA_TYPE


@dataclass
class StageResult:
    image: bytes
    media_type: str            # PNG_MEDIA_TYPE or RASTER_MEDIA_TYPE
    size: tuple[int, int]      # width, height of the checked answer
    gateway_ms: float          # wall time seen by the gateway, transfers and retries included
    stage_ms: float | None     # the stage's own X-Process-Time-Ms
    headers: dict[str, str]


class StageClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.http = StageHTTP(max_connections=64)
        self._info_cache: dict[str, tuple[float, dict]] = {}
        self.replicas = {name: ReplicaSet(spec, resolve_interval=settings.resolve_interval)
                         for name, spec in settings.service_urls.items()}
        # request id -> the replica serving it, so that its progress is asked of the same replica
        self._serving: dict[str, Replica] = {}

    async def close(self) -> None:
        await self.http.close()

    def _timeouts(self, service: str) -> dict[str, float]:
        return {"read_timeout": self.settings.stage_timeouts[service],
                "connect_timeout": self.settings.connect_timeout}

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(stop=stop_after_attempt(self.settings.retry_attempts),
                             wait=wait_exponential(multiplier=0.2, max=self.settings.retry_max_wait),
                             retry=retry_if_exception(_should_retry), reraise=True)

    async def process(self, service: str, image: bytes, params: dict, request_id: str | None = None, *,
                      media_type: str = PNG_MEDIA_TYPE, final: bool = True,
                      expected_size: tuple[int, int] | None = None, max_pixels: int) -> StageResult:
        """POST to one replica per attempt; a replica that failed is not tried again by the same request.

        ``request_id`` goes out as X-Request-Id so that ``progress`` can ask the stage how far it is. Cancelling
        the calling task closes the connection, which is the stage's signal to stop working. ``media_type``
        labels ``image``. A ``final`` answer (the one the user gets) is PNG; an intermediate one comes in the
        raster transport unless settings say PNG. The answer is checked (status, content type, an intact image
        of the expected size) before anything uses it.
        """
        replicas = self.replicas[service]
        tried: set[str] = set()
        accept = ACCEPT_PNG if final or self.settings.stage_transport == "png" else ACCEPT_RASTER
        # The image as the whole body and the params in a header: no multipart to build and parse per hop.
        headers = {"Accept": accept, "Content-Type": media_type, PARAMS_HEADER: json.dumps(params)}
        if request_id:
            headers["X-Request-Id"] = request_id
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
                        response = await self.http.request("POST", url, content=image, headers=headers,
                                                           **self._timeouts(service))
                    except StageTransportError:
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
        except StageConnectTimeout:
            log.warning("stage %s: connect timeout at %s", service, url)
            raise StageError(f"stage '{service}' is unreachable", code="stage_unreachable",
                             status=502, stage=service) from None
        except StageReadTimeout:
            raise StageError(f"stage '{service}' did not answer within {self.settings.stage_timeouts[service]:g}"
                             " s", code="stage_timeout", status=504, stage=service) from None
        except StageTransportError as exc:
            log.warning("stage %s at %s: %r", service, url, exc)
            raise StageError(f"stage '{service}' is unreachable or failed mid-request",
                             code="stage_unreachable", status=502, stage=service) from None
        finally:
            if request_id:
                self._serving.pop(request_id, None)
        gateway_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise _stage_failure(service, response)
        size = await run_check(_checked_answer_size, service, response, expected_size, max_pixels,
                               size=len(response.content))
        answered = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if answered not in accept:
            raise bad_answer(service, f"answered {answered}, asked for {accept}")
        stage_ms = _float_or_none(response.headers.get("x-process-time-ms"))
        return StageResult(response.content, answered, size, gateway_ms, stage_ms, dict(response.headers))

    async def progress(self, request_id: str) -> float | None:
        """The stage's own progress (0..1) of a request in flight; None when the stage does not report it."""
        replica = self._serving.get(request_id)
        if replica is None:
            return None
        try:
            response = await self.http.request("GET", f"{replica.url}/progress/{request_id}", read_timeout=2,
                                               connect_timeout=self.settings.connect_timeout)
            if response.status_code != 200:
                return None
            answer = response.json()
            return float(answer["progress"]) if answer.get("state") == "running" else None
        except (StageTransportError, ValueError, KeyError, TypeError):
            return None

    async def decide(self, service: str, image: bytes, params: dict) -> str | None:
        """What the stage would decide for ``image`` (POST /decide); None when it cannot say (down, slow, or
        an answer without a decision): an estimate then does without it."""
        replica = self.replicas[service].acquire()
        self.replicas[service].release(replica)  # a short call: balanced, but not counted as load
        try:
            response = await self.http.request(  # like /process: the image as the body, the params in a header
                "POST", replica.url + "/decide", content=image, **self._timeouts(service),
                headers={"Content-Type": media_type_of(image), PARAMS_HEADER: json.dumps(params)})
            decision = response.json().get("decision") if response.status_code == 200 else None
        except (StageTransportError, ValueError, AttributeError):
            return None
        return decision if isinstance(decision, str) else None

    async def get_json(self, service: str, path: str) -> dict:
        """A stage's /health or /info; a stage silent for STAGE_HEALTH_TIMEOUT_S counts as down."""
        replica = self.replicas[service].acquire()
        self.replicas[service].release(replica)  # a short read: balanced, but not counted as load
        url = replica.url + path
        wait = self.settings.stage_health_timeout_s
        try:
            response = await self.http.request("GET", url, read_timeout=wait,
                                               connect_timeout=min(wait, self.settings.connect_timeout))
            if response.status_code >= 400:
                raise ValueError(f"HTTP {response.status_code}")
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
            return body
        except (StageReadTimeout, StageConnectTimeout):
            log.warning("stage %s: no answer on %s within %g s", service, url, wait)
            raise StageError(f"stage '{service}' did not answer within {wait:g} s", code="stage_timeout",
                             status=504, stage=service) from None
        except (StageTransportError, ValueError) as exc:
            log.warning("stage %s: %s failed: %r", service, url, exc)
            raise StageError(f"stage '{service}' is unreachable", code="stage_unreachable", status=502,
                             stage=service) from None

    async def info(self, service: str, fresh: bool = False) -> dict:
        """The stage's /info, cached: a fresh copy is reused; when a refresh fails, the last one still serves
        (the /process call then meets the stage's own timeout), so a hung stage cannot stall validation.
        ``fresh`` asks the stage first (its throughput changes with every request), the cache only if silent."""
        cached = self._info_cache.get(service)
        if cached and not fresh and time.monotonic() - cached[0] < self.settings.info_cache_ttl:
            return cached[1]
        try:
            info = await self.get_json(service, "/info")
            if not isinstance(info.get("params"), list):
                raise StageError(f"stage '{service}' answered an unusable /info", code="stage_bad_answer",
                                 status=502, stage=service)
        except StageError:
            if cached:
                return cached[1]
            raise
        self._info_cache[service] = (time.monotonic(), info)
        return info

    async def warm_info_cache(self) -> None:
        """Fetch every stage's /info once at start (a stage that is down is simply tried again later)."""
        await asyncio.gather(*(self.info(s) for s in self.settings.service_urls), return_exceptions=True)


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def bad_answer(service: str, what: str) -> StageError:
    log.warning("stage %s gave an unusable answer: %s", service, what)
    return StageError(f"stage '{service}' gave an unusable answer ({what})", code="stage_bad_answer",
                      status=502, stage=service)


def _checked_answer_size(service: str, response: StageAnswer, expected: tuple[int, int] | None,
                         max_pixels: int) -> tuple[int, int]:
    if not response.content:
        raise bad_answer(service, "empty body")
    try:
        size = verify_image_answer(response.content, response.headers.get("content-type", ""), max_pixels)
    except StageError as exc:  # over the pixel limit
        raise bad_answer(service, exc.message) from None
    except ValueError as exc:
        raise bad_answer(service, str(exc)) from None
    if expected is not None and size != expected:
        raise bad_answer(service, f"image is {size[0]}x{size[1]}, expected {expected[0]}x{expected[1]}")
    return size


def _stage_failure(service: str, response: StageAnswer) -> StageError:
    """A stage's non-200 answer as a gateway error: the contract's 4xx/503 pass on with their code and
    message; anything else is 502 naming the stage (its text goes to the log, not to the client)."""
    error = None
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        pass
    valid = (isinstance(error, dict) and isinstance(error.get("code"), str)
             and isinstance(error.get("message"), str))
    if response.status_code in PASSED_ON_STATUSES and valid:
        extra = {k: v for k, v in error.items() if k not in ("code", "message", "stage")}
        return StageError(f"stage '{service}': {error['message']}", code=error["code"],
                          status=response.status_code, stage=service, details=extra)
    log.warning("stage %s answered HTTP %d: %s", service, response.status_code, response.text[:500])
    return StageError(f"stage '{service}' failed (HTTP {response.status_code})", code="stage_failed",
                      status=502, stage=service)
