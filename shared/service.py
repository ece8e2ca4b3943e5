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
import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .contract import (PROCESS_TIME_HEADER, Aborted, BadRequest, ImageTooLarge, InvalidParams, Param, StageContext,
                       StageError, error_body, params_schema, parse_params_json, validate_params)
from .imaging import Picture, accepts_raster, decode_any, encode_for, is_grayscale, max_pixels_from_env
from .throughput import Throughput

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
    # max input pixels; None means the MAX_PIXELS env var (default 2,000,000)
    max_input_pixels: Callable[[], int] | None = None
    # a stage without models is always ready; a model stage is ready when one model is usable
    needs_model: bool = False
    extra_info: Callable[[], dict[str, Any]] = field(default=lambda: {})

    def ready(self) -> bool:
        return not self.needs_model or any(m.get("available") for m in self.models().values())

    def input_limit(self) -> int:
        return self.max_input_pixels() if self.max_input_pixels else max_pixels_from_env()


def _error_response(exc: StageError, stage: str) -> JSONResponse:
    exc.stage = exc.stage or stage
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def create_stage_app(stage: Stage) -> FastAPI:
    app = FastAPI(title=f"{stage.name} stage", description=stage.description)
    # CPU models use every core for one request; more at once only thrashes caches and memory.
    concurrency = asyncio.Semaphore(int(os.environ.get("STAGE_CONCURRENCY", "1")))
    throughput = Throughput()   # recent seconds per megapixel, for the UI's time estimates

    @app.exception_handler(StageError)
    async def stage_error_handler(_: Request, exc: StageError):
        return _error_response(exc, stage.name)

    @app.exception_handler(Exception)
    async def unexpected_error_handler(_: Request, exc: Exception):
        log.exception("unexpected error in stage %s", stage.name)
        return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}", stage.name),
                            status_code=500)

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
                "throughput": throughput.report(), **stage.extra_info()}

    requests = RequestTracker()

    @app.get("/progress/{request_id}")
    async def progress(request_id: str):
        return requests.snapshot(request_id)

    @app.post("/process")
    async def process(request: Request):
        started = time.perf_counter()
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        ctx = StageContext()
        requests.start(request_id, ctx)
        outcome = "error"
        seen: dict[str, Any] = {}    # the input's size and kind, for the throughput record
        try:
            image_bytes, params = await read_process_form(request)
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
        throughput.record(time.perf_counter() - started, seen["megapixels"], params, seen["kind"])
        headers = {PROCESS_TIME_HEADER: f"{(time.perf_counter() - started) * 1000:.1f}",
                   "X-Image-Size": f"{result.width}x{result.height}", REQUEST_ID_HEADER: request_id,
                   "Vary": "Accept", **ctx.response_headers}
        return Response(memoryview(body), media_type=media_type, headers=headers)

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
    async with concurrency:
        entered.set()
        ctx.check_aborted()
        picture = await run_in_threadpool(decode_any, image_bytes, None, stage.input_limit())
        result = await run_in_threadpool(stage.run, picture, values, ctx)
        ctx.check_aborted()
        encoded = await run_in_threadpool(encode_for, result, raster)
    return result, encoded


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


async def read_multipart(request: Request, max_bytes: int | None = None) -> tuple[bytes, dict[str, str]]:
    """The multipart ``image`` file and the text fields, with 4xx errors that say what is wrong."""
    declared = request.headers.get("content-length")
    if max_bytes and declared and declared.isdigit() and int(declared) > max_bytes:
        raise ImageTooLarge(f"upload of {declared} bytes exceeds the {max_bytes}-byte limit")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("send multipart/form-data with an 'image' file field", code="missing_image")
    try:
        form = await request.form()
    except Exception as exc:
        raise BadRequest(f"malformed multipart body: {exc}", code="bad_multipart") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise InvalidParams("the 'image' file field is missing", field="image", status=400, code="missing_image")
    fields = {}
    for key, value in form.items():
        if key != "image":
            fields[key] = value if isinstance(value, str) else (await value.read()).decode("utf-8", "replace")
    return await upload.read(), fields


async def read_process_form(request: Request) -> tuple[bytes, dict]:
    """``/process`` input: the image and its JSON ``params`` object."""
    data, fields = await read_multipart(request)
    return data, parse_params_json(fields.get("params"))


def run_service(module_app: str, stage_name: str) -> None:
    """``python -m services.<stage>`` entry: uvicorn on the stage's port (env PORT overrides)."""
    import uvicorn

    from .contract import DEFAULT_PORTS
    port = int(os.environ.get("PORT", DEFAULT_PORTS[stage_name]))
    uvicorn.run(module_app, host=os.environ.get("HOST", "127.0.0.1"), port=port,
                log_level=os.environ.get("LOG_LEVEL", "info"))
