"""The thin HTTP shell every stage service shares: ``POST /process``, ``GET /health``, ``GET /info``,
``GET /progress/{request_id}``.

A service module only defines a ``Stage`` (pure ``run(picture, params, ctx) -> picture``) and calls
``create_stage_app(stage)``.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .contract import (PARAMS_HEADER, PROCESS_TIME_HEADER, Aborted, Param, StageContext, params_schema,
                       parse_params_json, validate_params)
from .heap import configure_heap
from .imaging import RAW_BODY_TYPES, Picture, accepts_raster, decode_any, encode_for, is_grayscale
from .openapi import STAGE_DECIDE_OPENAPI, STAGE_PROCESS_OPENAPI, install_error_handlers
from .settings import StageSettings, cached_settings
from .throughput import Throughput
from .upload import read_multipart, read_raw_image, reject_unknown_fields

log = logging.getLogger("restore.service")

REQUEST_ID_HEADER = "X-Request-Id"  # sent by the gateway with /process; GET /progress/{id} reports on it
PROGRESS_HISTORY = 256              # recent request ids /progress remembers
DISCONNECT_POLL_S = 0.2             # how often /process checks that its client is still connected


@dataclass
class Stage:
    """Declarative description of a stage plus its pure processing function."""

    name: str
    description: str
    params: tuple[Param, ...]
    run: Callable[[Picture, dict, StageContext], Picture]
    # name -> {"available": bool, "default": bool, ...}; called for /health and /info
    models: Callable[[], dict[str, dict[str, Any]]] = field(default=lambda: {})
    # the service's validated settings (MAX_PIXELS and the rest); None: the shared StageSettings
    settings: StageSettings | None = None
    # a stage without models is always ready; a model stage is ready when one model is usable
    needs_model: bool = False
    extra_info: Callable[[], dict[str, Any]] = field(default=lambda: {})
    # a stage whose cost depends on the photo: what it would decide for it (cheap), served as POST /decide
    decide: Callable[[Picture, dict], str] | None = None

    def ready(self) -> bool:
        return not self.needs_model or any(m.get("available") for m in self.models().values())

    def config(self) -> StageSettings:
        return self.settings or cached_settings(StageSettings)

    def input_limit(self) -> int:
        return self.config().input_pixel_limit()


def create_stage_app(stage: Stage) -> FastAPI:
    settings = stage.config()  # validated now: a bad variable stops the service before it serves
    configure_heap(settings)
    app = FastAPI(title=f"{stage.name} stage", description=stage.description)
    install_error_handlers(app, stage.name)
    # CPU models use every core for one request; more at once only thrashes caches and memory.
    concurrency = asyncio.Semaphore(settings.stage_concurrency)
    throughput = Throughput(skip_first=1)   # recent seconds per megapixel (not the cold first request)

    @app.get("/health")
    async def health():
        models = stage.models()
        return {"status": "ok" if stage.ready() else "unavailable", "stage": stage.name, "models": models}

    @app.get("/info")
    async def info():
        models = stage.models()
        default = next((n for n, m in models.items() if m.get("default")), None)
        return {"stage": stage.name, "description": stage.description, "params": params_schema(stage.params),
                "models": models, "default_model": default, "max_input_pixels": stage.input_limit(),
                "throughput": throughput.report(), "decides": stage.decide is not None, **stage.extra_info()}

    requests = RequestTracker()

    @app.get("/progress/{request_id}")
    async def progress(request_id: str):
        return requests.snapshot(request_id)

    @app.post("/process", openapi_extra=STAGE_PROCESS_OPENAPI, response_class=Response)
    async def process(request: Request):
        """Run the stage on the ``image`` file with the JSON object ``params``; answers the result as PNG."""
        started = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        ctx = StageContext()
        requests.start(request_id, ctx)
        outcome = "error"
        seen: dict[str, Any] = {}    # the input's size and kind, for the throughput record
        try:
            image_bytes, params = await read_process_form(request, settings.upload_limit())
            values = validate_params(stage.params, params)
            noted = noting_input(stage, seen)
            # PNG for anyone; the cheap raster transport only for a caller (the gateway) that asks for it.
            raster = accepts_raster(request.headers.get("accept"))
            result, (body, media_type) = await run_until_disconnected(
                request, ctx, lambda entered: run_in_slot(noted, concurrency, image_bytes, values, ctx, entered,
                                                          raster))
            outcome = "ok"
        except Aborted:
            outcome = "aborted"
            raise
        finally:
            requests.finish(request_id, outcome)
        throughput.record(time.perf_counter() - started, seen["megapixels"], params, seen["kind"], ctx.decision)
        headers = {PROCESS_TIME_HEADER: f"{(time.perf_counter() - started) * 1000:.1f}",
                   "X-Image-Size": f"{result.width}x{result.height}", REQUEST_ID_HEADER: request_id,
                   "Vary": "Accept", **ctx.response_headers}
        return Response(memoryview(body), media_type=media_type, headers=headers)

    if stage.decide is not None:
        decide = stage.decide

        @app.post("/decide", openapi_extra=STAGE_DECIDE_OPENAPI)
        async def decide_endpoint(request: Request):
            """What ``/process`` would decide for this image with these params (for time estimates), without
            processing it. Not queued behind ``/process``: the measure is cheap."""
            image_bytes, params = await read_process_form(request, settings.upload_limit())
            values = validate_params(stage.params, params)

            def measure() -> str:
                return decide(decode_any(image_bytes, None, stage.input_limit()), values)
            return {"stage": stage.name, "decision": await run_in_threadpool(measure)}

    return app


def noting_input(stage: Stage, seen: dict[str, Any]) -> Stage:
    """``stage`` whose run first notes the megapixels and kind ("gray"/"color") of the decoded input."""
    def run(picture: Picture, values: dict, ctx: StageContext) -> Picture:
        seen["megapixels"] = picture.pixels / 1e6
        seen["kind"] = "gray" if is_grayscale(picture.rgb) else "color"
        return stage.run(picture, values, ctx)
    return dataclasses.replace(stage, run=run)


async def run_in_slot(stage: Stage, concurrency: asyncio.Semaphore, image_bytes: bytes, values: dict,
                      ctx: StageContext, entered: asyncio.Event,
                      raster: bool = False) -> tuple[Picture, tuple[bytes | bytearray, str]]:
    """Decode, run and encode inside the stage's concurrency slot, all off the event loop: a waiting
    request holds only its encoded upload, and ``/health`` answers while the stage works. The answer is
    the raster transport when ``raster`` (the caller asked for it), else PNG."""
    def decode_run_encode() -> tuple[Picture, tuple[bytes | bytearray, str]]:
        ctx.check_aborted()
        result = stage.run(decode_any(image_bytes, None, stage.input_limit()), values, ctx)
        ctx.check_aborted()
        return result, encode_for(result, raster)

    async with concurrency:
        entered.set()
        # One trip to the thread pool, not one per step: every hand-over between threads waits for a
        # sleeping thread to wake, and that wait is a visible part of a short request.
        return await run_in_threadpool(decode_run_encode)


async def run_until_disconnected(request: Request, ctx: StageContext,
                                 work: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Run ``work`` while watching the HTTP client; when it goes away, abort the work.

    A request still waiting for the slot is cancelled at once. A running one is told to abort (it stops at
    its next check: before each tile, between network layers) and is waited for, so the slot is only
    released once the CPU is really free for the next request.
    """
    entered = asyncio.Event()
    task = asyncio.ensure_future(work(entered))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                ctx.abort()
                if not entered.is_set():
                    task.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
                raise Aborted("the client closed the connection")
    finally:
        if not task.done():  # the handler itself was cancelled (server shutdown)
            ctx.abort()
            task.cancel()


class RequestTracker:
    """The progress of recent ``/process`` requests by request id, for ``GET /progress/{id}``.

    Bounded: the oldest finished entries are forgotten first, so memory stays small whatever the traffic.
    """

    def __init__(self, size: int = PROGRESS_HISTORY):
        self.size = size
        self._entries: "OrderedDict[str, dict]" = OrderedDict()

    def start(self, request_id: str, ctx: StageContext) -> None:
        self._entries[request_id] = {"ctx": ctx, "state": "running", "outcome": None}
        self._entries.move_to_end(request_id)
        while len(self._entries) > self.size:
            oldest = next((k for k, v in self._entries.items() if v["state"] == "done"), None)
            self._entries.pop(oldest if oldest is not None else next(iter(self._entries)))

    def finish(self, request_id: str, outcome: str) -> None:
        entry = self._entries.get(request_id)
        if entry is not None:
            entry["state"], entry["outcome"] = "done", outcome
            if outcome == "ok":
                entry["ctx"].set_progress(1.0)

    def snapshot(self, request_id: str) -> dict:
        entry = self._entries.get(request_id)
        if entry is None:
            return {"request_id": request_id, "state": "unknown", "progress": 0.0}
        return {"request_id": request_id, "state": entry["state"],
                "progress": round(entry["ctx"].progress_value, 4), "outcome": entry["outcome"]}


PROCESS_FIELDS = frozenset({"params"})


async def read_process_form(request: Request, max_bytes: int) -> tuple[bytes, dict]:
    """``/process`` input: the image and its JSON ``params`` object (the body limit applies while reading).

    Multipart with ``image`` and ``params`` fields, or (the gateway's hops) the image alone as the body with
    its media type, and the params in the X-Stage-Params header: no multipart to build and parse per hop."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in RAW_BODY_TYPES:
        data = await read_raw_image(request, max_bytes)
        return data, parse_params_json(request.headers.get(PARAMS_HEADER))
    data, fields = await read_multipart(request, max_bytes)
    reject_unknown_fields(fields, PROCESS_FIELDS)
    return data, parse_params_json(fields.get("params"))


def run_service(module_app: str, stage_name: str) -> None:
    """``python -m services.<stage>`` entry: uvicorn on the stage's port (env PORT overrides)."""
    import uvicorn

    from .contract import DEFAULT_PORTS
    settings = cached_settings(StageSettings)
    uvicorn.run(module_app, host=settings.host, port=settings.port or DEFAULT_PORTS[stage_name],
                log_level=settings.log_level)
