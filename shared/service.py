"""The thin HTTP shell every stage service shares: ``POST /process``, ``GET /health``, ``GET /info``.

A service module only defines a ``Stage`` (pure ``run(picture, params, ctx) -> picture``) and calls
``create_stage_app(stage)``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .contract import PROCESS_TIME_HEADER, Param, StageContext, params_schema, parse_params_json, validate_params
from .imaging import Picture, decode_image, encode_png
from .openapi import STAGE_PROCESS_OPENAPI, install_error_handlers
from .settings import StageSettings, cached_settings
from .upload import read_multipart, reject_unknown_fields

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
    # the service's validated settings (MAX_PIXELS and the rest); None: the shared StageSettings
    settings: StageSettings | None = None
    # a stage without models is always ready; a model stage is ready when one model is usable
    needs_model: bool = False
    extra_info: Callable[[], dict[str, Any]] = field(default=lambda: {})

    def ready(self) -> bool:
        return not self.needs_model or any(m.get("available") for m in self.models().values())

    def config(self) -> StageSettings:
        return self.settings or cached_settings(StageSettings)

    def input_limit(self) -> int:
        return self.config().input_pixel_limit()


def create_stage_app(stage: Stage) -> FastAPI:
    settings = stage.config()  # validated now: a bad variable stops the service before it serves
    app = FastAPI(title=f"{stage.name} stage", description=stage.description)
    install_error_handlers(app, stage.name)
    # CPU models use every core for one request; more at once only thrashes caches and memory.
    concurrency = asyncio.Semaphore(settings.stage_concurrency)

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

    @app.post("/process", openapi_extra=STAGE_PROCESS_OPENAPI, response_class=Response)
    async def process(request: Request):
        """Run the stage on the ``image`` file with the JSON object ``params``; answers the result as PNG."""
        started = time.perf_counter()
        image_bytes, params = await read_process_form(request, settings.upload_limit())
        values = validate_params(stage.params, params)
        picture = decode_image(image_bytes, stage.input_limit())
        ctx = StageContext()
        async with concurrency:
            result = await run_in_threadpool(stage.run, picture, values, ctx)
        png = await run_in_threadpool(encode_png, result)
        headers = {PROCESS_TIME_HEADER: f"{(time.perf_counter() - started) * 1000:.1f}",
                   "X-Image-Size": f"{result.width}x{result.height}", **ctx.response_headers}
        return Response(png, media_type="image/png", headers=headers)

    return app


PROCESS_FIELDS = frozenset({"params"})


async def read_process_form(request: Request, max_bytes: int) -> tuple[bytes, dict]:
    """``/process`` input: the image and its JSON ``params`` object (the body limit applies while reading)."""
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
