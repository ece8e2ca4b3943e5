"""The gateway: composes stage services into chains over HTTP.

POST /v1/restore (simple mode), POST /v1/pipeline (advanced), POST /v1/finish (interactive blur/sharpen),
/v1/jobs (asynchronous runs with progress), GET /v1/stages, GET /health.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from shared.contract import InvalidParams, StageError, error_body
from shared.imaging import decode_image, encode_jpeg, encode_png
from shared.service import read_multipart

from .chains import (STEPS, ChainOutcome, build_advanced_steps, parse_advanced_chain, run_chain,
                     simple_chain)
from .client import StageClient
from .jobs import Jobs
from .jobs_store import JobSettings
from .settings import Settings

log = logging.getLogger("restore.gateway")
MAX_UPLOAD_BYTES = int(os.environ.get("MAX_UPLOAD_BYTES", 100 * 1024 * 1024))


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings.from_env()
    client = StageClient(settings)
    # Jobs are only enqueued and read here; `python -m gateway.worker` runs them.
    jobs = Jobs(JobSettings())
    app.state.settings, app.state.client, app.state.jobs = settings, client, jobs
    yield
    await client.close()


app = FastAPI(title="Old-photo restoration gateway", lifespan=lifespan)


@app.exception_handler(StageError)
async def stage_error_handler(_: Request, exc: StageError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(Exception)
async def unexpected_error_handler(_: Request, exc: Exception):
    log.exception("unexpected gateway error")
    return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: {exc}"), status_code=500)


async def validated_upload(request: Request, max_pixels: int) -> tuple[bytes, dict[str, str]]:
    data, fields = await read_multipart(request, MAX_UPLOAD_BYTES)
    # Decoding here rejects bad uploads before any stage is called; the stages decode the same bytes.
    await run_in_threadpool(decode_image, data, max_pixels)
    return data, fields


async def passthrough_original(data: bytes, max_pixels: int) -> bytes:
    """The upload as PNG, for a chain in which every stage was skipped."""
    return await run_in_threadpool(lambda: encode_png(decode_image(data, max_pixels)))


def result_headers(outcome: ChainOutcome) -> dict[str, str]:
    headers = {"Server-Timing": outcome.server_timing(),
               "X-Stages-Run": ",".join(t.name for t in outcome.timings),
               "X-Skipped-Stages": ",".join(name for name, _ in outcome.skipped),
               "X-Stage-Times": json.dumps({t.name: {"gateway_ms": round(t.gateway_ms, 1), "stage_ms": t.stage_ms}
                                            for t in outcome.timings})}
    if outcome.skipped:
        headers["X-Skipped-Reasons"] = json.dumps(dict(outcome.skipped))
    headers.update(outcome.forwarded_headers)
    return headers


async def chain_response(request: Request, data: bytes, outcome: ChainOutcome) -> Response:
    image = outcome.image or await passthrough_original(data, request.app.state.settings.max_pixels)
    return Response(image, media_type="image/png", headers=result_headers(outcome))


async def steps_from_fields(request: Request, mode: str, fields: dict[str, str]):
    if mode == "simple":
        return simple_chain(fields.get("colorize", "auto").strip().lower(), fields.get("upscale", "none"),
                            fields.get("repair", "auto").strip().lower(),
                            fields.get("tone", "auto").strip().lower())
    if mode == "advanced":
        return await build_advanced_steps(request.app.state.client, parse_advanced_chain(fields.get("stages")))
    raise InvalidParams("'mode' must be simple or advanced", field="mode")


async def run_synchronously(request: Request, mode: str) -> Response:
    data, fields = await validated_upload(request, request.app.state.settings.max_pixels)
    steps = await steps_from_fields(request, mode, fields)
    outcome = await run_chain(request.app.state.client, data, steps)
    return await chain_response(request, data, outcome)


@app.post("/v1/restore")
async def restore(request: Request):
    """Simple mode: fixed chain; the user picks repair (auto|on|off), colorize (auto|on|off), tone (auto|off) and upscale
    (none|x2|x4|enhance|factor)."""
    return await run_synchronously(request, "simple")


@app.post("/v1/pipeline")
async def pipeline(request: Request):
    """Advanced mode: ``stages`` = JSON list of {"stage": name, "params": {...}}, any order and subset."""
    return await run_synchronously(request, "advanced")


FINISH_FIELDS = {"blur_sigma": 0.0, "sharpen_amount": 0.0, "sharpen_radius": 1.0, "sharpen_threshold": 0.0}


@app.post("/v1/finish")
async def finish(request: Request):
    """Final adjustment of a result: extra blur and sharpness; ``format`` png (default) or jpeg."""
    settings = request.app.state.settings
    data, fields = await validated_upload(request, settings.finish_max_pixels)
    params = {}
    for name, default in FINISH_FIELDS.items():
        try:
            params[name] = float(fields.get(name, default))
        except ValueError:
            raise InvalidParams(f"'{name}' must be a number", field=name) from None
    fmt = fields.get("format", "png").lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise InvalidParams("'format' must be png or jpeg", field="format")
    try:
        quality = int(fields.get("quality", 92))
    except ValueError:
        raise InvalidParams("'quality' must be an integer 1..100", field="quality") from None
    if not 1 <= quality <= 100:
        raise InvalidParams("'quality' must be an integer 1..100", field="quality")
    steps = await build_advanced_steps(request.app.state.client, [("postprocess", params)])
    outcome = await run_chain(request.app.state.client, data, steps)
    headers = result_headers(outcome)
    if fmt == "png":
        return Response(outcome.image, media_type="image/png", headers=headers)
    jpeg = await run_in_threadpool(lambda: encode_jpeg(decode_image(outcome.image, settings.finish_max_pixels),
                                                       quality))
    return Response(jpeg, media_type="image/jpeg", headers=headers)


@app.get("/v1/stages")
async def stages(request: Request):
    """Each service's /info and /health, gathered concurrently; a down service is reported, not fatal."""
    client: StageClient = request.app.state.client
    services = sorted({service for service, _ in STEPS.values()})

    async def describe(service: str) -> dict:
        try:
            info, health = await asyncio.gather(client.get_json(service, "/info"), client.get_json(service, "/health"))
            return {"service": service, "status": health.get("status"), "info": info}
        except StageError as exc:
            return {"service": service, "status": "down", "error": exc.body()["error"]}

    described = dict(zip(services, await asyncio.gather(*(describe(s) for s in services))))
    return {"steps": {name: {"service": service, "pinned_params": pinned} for name, (service, pinned) in STEPS.items()},
            "services": described, "max_pixels": request.app.state.settings.max_pixels}


@app.get("/health")
async def health(request: Request):
    client: StageClient = request.app.state.client

    async def status(service: str) -> str:
        try:
            return (await client.get_json(service, "/health")).get("status", "unknown")
        except StageError:
            return "down"

    async def job_store() -> dict:
        jobs = request.app.state.jobs
        try:
            await run_in_threadpool(jobs.store.ping)
            return {"backend": jobs.settings.backend, "reachable": True}
        except Exception as exc:  # the API still serves synchronous chains without its job store
            return {"backend": jobs.settings.backend, "reachable": False, "error": type(exc).__name__}

    names = list(request.app.state.settings.service_urls)
    statuses = dict(zip(names, await asyncio.gather(*(status(n) for n in names))))
    return {"status": "ok", "stages": statuses, "jobs": await job_store()}


@app.post("/v1/jobs", status_code=202)
async def create_job(request: Request):
    """Queue a simple or advanced run (same fields as /v1/restore or /v1/pipeline, plus ``mode``)."""
    data, fields = await validated_upload(request, request.app.state.settings.max_pixels)
    mode = fields.get("mode", "simple")
    steps = await steps_from_fields(request, mode, fields)
    status = await run_in_threadpool(request.app.state.jobs.submit, mode, steps, data)
    return JSONResponse(status, status_code=202, headers={"Location": f"/v1/jobs/{status['id']}"})


@app.get("/v1/jobs/{job_id}")
async def job_status(job_id: str, request: Request):
    return await run_in_threadpool(request.app.state.jobs.status, job_id)


@app.get("/v1/jobs/{job_id}/result")
async def job_result(job_id: str, request: Request):
    image, outcome = await run_in_threadpool(request.app.state.jobs.result, job_id)
    return Response(image, media_type="image/png", headers=result_headers(outcome))


@app.delete("/v1/jobs/{job_id}")
async def cancel_job(job_id: str, request: Request):
    """Cancel a queued or running job: it leaves the queue at once; a running stage's request is closed."""
    return await run_in_threadpool(request.app.state.jobs.cancel, job_id)
