"""The thin HTTP shell every stage service shares: ``POST /process``, ``GET /health``, ``GET /info``.

A service module only defines a ``Stage`` (pure ``run(picture, params, ctx) -> picture``) and calls
``create_stage_app(stage)``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .contract import (PROCESS_TIME_HEADER, BadRequest, ImageTooLarge, InvalidParams, Param, StageContext,
                       StageError, error_body, params_schema, parse_params_json, validate_params)
from .imaging import Picture, accepts_raster, decode_any, encode_for, max_pixels_from_env

log = logging.getLogger("restore.service")


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
                **stage.extra_info()}

    @app.post("/process")
    async def process(request: Request):
        started = time.perf_counter()
        image_bytes, params = await read_process_form(request)
        values = validate_params(stage.params, params)
        picture = decode_any(image_bytes, max_pixels=stage.input_limit())
        ctx = StageContext()
        async with concurrency:
            result = await run_in_threadpool(stage.run, picture, values, ctx)
        # PNG for anyone; the cheap raster transport only for a caller (the gateway) that asks for it.
        body, media_type = await run_in_threadpool(encode_for, result, accepts_raster(request.headers.get("accept")))
        headers = {PROCESS_TIME_HEADER: f"{(time.perf_counter() - started) * 1000:.1f}",
                   "X-Image-Size": f"{result.width}x{result.height}", "Vary": "Accept", **ctx.response_headers}
        return Response(memoryview(body), media_type=media_type, headers=headers)

    return app


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
