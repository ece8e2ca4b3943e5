"""The gateway: composes stage services into chains over HTTP.

POST /v1/restore (simple mode), POST /v1/pipeline (advanced), POST /v1/finish (interactive blur/sharpen),
/v1/jobs (asynchronous runs with progress), GET /v1/stages, GET /health.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from typing import Any, Callable, Coroutine

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from shared.contract import InvalidParams, StageError
from shared.heap import configure_heap
from shared.imaging import (check_png, check_upload_header, decode_image, encode_png, png_to_jpeg, verify_upload,
                            verify_upload_data)
from shared.openapi import endpoint_openapi, error_responses, image_response, install_error_handlers
from shared.settings import load_settings
from shared.upload import read_multipart, reject_unknown_fields

from .chains import (FUSIONS, STEPS, ChainOutcome, build_advanced_steps, parse_advanced_chain, run_chain,
                     simple_chain)
from .client import StageClient
from .jobs import Jobs
from .jobs_store import JobSettings
from .settings import Settings

log = logging.getLogger("restore.gateway")
# Validated at import: a bad variable stops the gateway with a message naming it.
SETTINGS = Settings.from_env()
configure_heap(SETTINGS)
# Bytes one /v1/finish may hold per result pixel: the upload and the result PNG (up to 8 bytes a pixel
# each at 16-bit RGBA, usually far less) and, for JPEG, the decoded 8-bit pixels.
FINISH_BYTES_PER_PIXEL = 12


def finish_slots(settings: Settings) -> int:
    """How many /v1/finish requests may run at once within FINISH_MEMORY_BUDGET_MB."""
    per_request = settings.finish_pixel_limit * FINISH_BYTES_PER_PIXEL
    return max(1, settings.finish_memory_budget_mb * 1024 * 1024 // per_request)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    settings = SETTINGS
    client = StageClient(settings)
    # Jobs are only enqueued and read here; `python -m gateway.worker` runs them.
    jobs = Jobs(load_settings(JobSettings))
    app.state.settings, app.state.client, app.state.jobs = settings, client, jobs
    app.state.finish_slots = asyncio.Semaphore(finish_slots(settings))
    warm = asyncio.create_task(client.warm_info_cache())
    yield
    warm.cancel()
    await client.close()


app = FastAPI(title="Old-photo restoration gateway", lifespan=lifespan,
              description="Restores old photos by running stage services in chains. Every error is "
                          "`{\"error\": {\"code\", \"message\", \"stage\"}}`.")
install_error_handlers(app)

SIMPLE_FIELDS = frozenset({"colorize", "upscale", "repair", "tone"})
ADVANCED_FIELDS = frozenset({"stages"})
FINISH_FIELDS = {"blur_sigma": 0.0, "sharpen_amount": 0.0, "sharpen_radius": 1.0, "sharpen_threshold": 0.0}
FINISH_OTHER_FIELDS = frozenset({"format", "quality"})
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_large_upload(data: bytes, max_pixels: int) -> None:
    """/v1/finish takes results up to 16x MAX_PIXELS: checked from the header and, for PNG, inflated in
    steps without decoding; the postprocess stage is the one place that decodes it."""
    fmt, _, _ = check_upload_header(data, max_pixels)
    if fmt == "PNG":
        check_png(data, max_pixels)


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


def known_fields(mode: str) -> frozenset[str]:
    return SIMPLE_FIELDS if mode == "simple" else ADVANCED_FIELDS if mode == "advanced" else frozenset()


async def steps_from_fields(request: Request, mode: str, fields: dict[str, str]):
    if mode == "simple":
        return simple_chain(fields.get("colorize", "auto").strip().lower(), fields.get("upscale", "none"),
                            fields.get("repair", "auto").strip().lower(),
                            fields.get("tone", "auto").strip().lower())
    if mode == "advanced":
        return await build_advanced_steps(request.app.state.client, parse_advanced_chain(fields.get("stages")))
    raise InvalidParams("'mode' must be simple or advanced", field="mode")


async def checked_while_running(check: Callable[[], None] | None,
                                chain: Coroutine[Any, Any, ChainOutcome]) -> ChainOutcome:
    """``chain``'s outcome, with ``check`` of the upload run in a thread meanwhile (the first stage decodes
    the upload for far longer than the check takes, on the same bytes): a failed check cancels the chain
    and is the answer, and whatever the chain ends with, the upload's own fault is said first."""
    if check is None:
        return await chain
    checking = asyncio.ensure_future(asyncio.to_thread(check))
    running = asyncio.ensure_future(chain)
    running.add_done_callback(lambda task: task.cancelled() or task.exception())  # said or superseded
    try:
        done, _ = await asyncio.wait({checking, running}, return_when=asyncio.FIRST_EXCEPTION)
        if checking in done and checking.exception() is not None:
            raise checking.exception()
        await checking
        return await running
    finally:
        for task in (checking, running):
            task.cancel()


async def run_synchronously(request: Request, mode: str) -> Response:
    data, fields = await read_multipart(request, request.app.state.settings.input_upload_limit)
    reject_unknown_fields(fields, known_fields(mode))
    max_pixels = request.app.state.settings.max_pixels
    # Before anything is sent: the format, size and pixel limit from the header. A PNG's chunks and CRCs (what
    # a broken transfer damages) are checked while the first stage starts on it, and a failure is the answer.
    # The image data itself is checked by the first stage's decode, and a stage that cannot decode the upload
    # is answered as the gateway's own 400 (run_chain): inflating it here as well would cost the CPU the
    # first stage is using.
    fmt, width, height = check_upload_header(data, max_pixels)
    try:
        steps = await steps_from_fields(request, mode, fields)
        outcome = await checked_while_running(
            (lambda: check_png(data, max_pixels, False)) if fmt == "PNG" else None,
            run_chain(request.app.state.client, data, steps))
    except StageError as exc:
        if exc.code != "corrupt_image":  # what is wrong with the upload is said first (a bad param, a stage down)
            await run_in_threadpool(verify_upload_data, data, fmt, width, height, max_pixels)
        raise
    return await chain_response(request, data, outcome)


STRING = {"type": "string"}
CHAIN_ERRORS = (400, 413, 415, 422, 500, 502, 503, 504)
RESULT_PNG = image_response("the restored image (PNG); X-Stages-Run, X-Skipped-Stages, X-Skipped-Reasons, "
                            "X-Stage-Times and Server-Timing say what ran")
SIMPLE_BODY = {"repair": {**STRING, "enum": ["auto", "on", "off"], "default": "auto"},
               "tone": {**STRING, "enum": ["auto", "off"], "default": "auto"},
               "colorize": {**STRING, "enum": ["auto", "on", "off"], "default": "auto"},
               "upscale": {**STRING, "default": "none", "description": "none, x2, x4, enhance or a factor in (1, 8]",
                           "example": "x2"}}
ADVANCED_BODY = {"stages": {**STRING, "description": "JSON list of {\"stage\": name, \"params\": {...}}",
                            "example": '[{"stage": "denoise"}]'}}


@app.post("/v1/restore", response_class=Response, openapi_extra=endpoint_openapi(SIMPLE_BODY, RESULT_PNG, CHAIN_ERRORS))
async def restore(request: Request):
    """Simple mode: fixed chain; the user picks repair (auto|on|off), colorize (auto|on|off), tone (auto|off) and upscale
    (none|x2|x4|enhance|factor)."""
    return await run_synchronously(request, "simple")


@app.post("/v1/pipeline", response_class=Response,
          openapi_extra=endpoint_openapi(ADVANCED_BODY, RESULT_PNG, CHAIN_ERRORS))
async def pipeline(request: Request):
    """Advanced mode: ``stages`` = JSON list of {"stage": name, "params": {...}}, any order and subset."""
    return await run_synchronously(request, "advanced")


FINISH_BODY = {**{name: {"type": "number", "default": default} for name, default in FINISH_FIELDS.items()},
               "format": {**STRING, "enum": ["png", "jpeg", "jpg"], "default": "png"},
               "quality": {"type": "integer", "minimum": 1, "maximum": 100, "default": 92}}


@app.post("/v1/finish", response_class=Response,
          openapi_extra=endpoint_openapi(FINISH_BODY, image_response("the finished image", ("image/png", "image/jpeg")),
                                         CHAIN_ERRORS))
async def finish(request: Request):
    """Final adjustment of a result: extra blur and sharpness; ``format`` png (default) or jpeg."""
    settings: Settings = request.app.state.settings
    # Held from the upload on: each finish may hold a result of up to 16x MAX_PIXELS, and only as many run
    # at once as FINISH_MEMORY_BUDGET_MB allows.
    async with request.app.state.finish_slots:
        data, fields = await read_multipart(request, settings.max_upload_bytes)
        reject_unknown_fields(fields, frozenset(FINISH_FIELDS) | FINISH_OTHER_FIELDS)
        params = {name: finite_number(fields, name, default) for name, default in FINISH_FIELDS.items()}
        fmt = fields.get("format", "png").strip().lower()
        if fmt not in ("png", "jpeg", "jpg"):
            raise InvalidParams("'format' must be png or jpeg", field="format")
        quality_text = fields.get("quality", "92").strip()
        if not (quality_text.isdigit() and len(quality_text) <= 3 and 1 <= int(quality_text) <= 100):
            raise InvalidParams("'quality' must be an integer 1..100", field="quality")
        await run_in_threadpool(check_large_upload, data, settings.finish_pixel_limit)
        steps = await build_advanced_steps(request.app.state.client, [("postprocess", params)])
        outcome = await run_chain(request.app.state.client, data, steps)
        del data
        headers = result_headers(outcome)
        if fmt == "png":
            return Response(outcome.image, media_type="image/png", headers=headers)
        jpeg = await run_in_threadpool(png_to_jpeg, outcome.image, int(quality_text))
        return Response(jpeg, media_type="image/jpeg", headers=headers)


def finite_number(fields: dict[str, str], name: str, default: float) -> float:
    text = fields.get(name)
    if text is None:
        return default
    try:
        value = float(text) if len(text) <= 64 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidParams(f"'{name}' must be a finite number", field=name)
    return value


@app.get("/v1/stages", responses=error_responses((500,)))
async def stages(request: Request):
    """Each service's /info (fresh, or the cached copy when the stage is silent) and /health, gathered
    concurrently; a silent service is reported down after STAGE_HEALTH_TIMEOUT_S."""
    client: StageClient = request.app.state.client
    services = sorted({service for service, _ in STEPS.values()})

    async def describe(service: str) -> dict:
        try:
            info, health = await asyncio.gather(client.info(service, fresh=True),
                                                client.get_json(service, "/health"))
            return {"service": service, "status": health.get("status"), "info": info}
        except StageError as exc:
            return {"service": service, "status": "down", "error": exc.body()["error"]}

    described = dict(zip(services, await asyncio.gather(*(describe(s) for s in services))))
    settings = request.app.state.settings
    # steps that go to their service as one call, and the params each contributes (for time estimates)
    fusions = [{"steps": list(pair), **fusion.describe()} for pair, fusion in FUSIONS.items()] \
        if settings.fuse_steps else []
    return {"steps": {name: {"service": service, "pinned_params": pinned} for name, (service, pinned) in STEPS.items()},
            "fusions": fusions, "services": described, "max_pixels": settings.max_pixels}


@app.get("/health", responses=error_responses((500,)))
async def health(request: Request):
    """The gateway is up; each stage's status ("down" when silent for STAGE_HEALTH_TIMEOUT_S)."""
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


JOB_STATUS = {"description": "the job's state", "content": {"application/json": {"schema": {"type": "object"}}}}


async def upload_with_mode(request: Request) -> tuple[bytes, str, list]:
    """The checked upload, its ``mode`` (simple|advanced) and the steps that mode's fields ask for."""
    data, fields = await read_multipart(request, request.app.state.settings.input_upload_limit)
    mode = fields.pop("mode", "simple")
    if mode not in ("simple", "advanced"):
        raise InvalidParams("'mode' must be simple or advanced", field="mode")
    reject_unknown_fields(fields, known_fields(mode))
    await run_in_threadpool(verify_upload, data, request.app.state.settings.max_pixels)
    return data, mode, await steps_from_fields(request, mode, fields)


@app.post("/v1/jobs", status_code=202, response_class=JSONResponse, openapi_extra=endpoint_openapi(
    {"mode": {**STRING, "enum": ["simple", "advanced"], "default": "simple"}, **SIMPLE_BODY, **ADVANCED_BODY},
    JOB_STATUS, (400, 413, 415, 422, 429, 500, 502, 503, 504), ok_status=202))
async def create_job(request: Request):
    """Queue a simple or advanced run (same fields as /v1/restore or /v1/pipeline, plus ``mode``)."""
    data, mode, steps = await upload_with_mode(request)
    status = await run_in_threadpool(request.app.state.jobs.submit, mode, steps, data)
    return JSONResponse(status, status_code=202, headers={"Location": f"/v1/jobs/{status['id']}"})


DECISIONS = {"type": "object", "required": ["decisions"], "properties": {"decisions": {
    "type": "object", "additionalProperties": {"type": "string"},
    "description": "step -> what its stage would decide for this photo (e.g. deblur: sharp, defocus, motion)"}}}


@app.post("/v1/decisions", response_class=JSONResponse, openapi_extra=endpoint_openapi(
    {"mode": {**STRING, "enum": ["simple", "advanced"], "default": "simple"}, **SIMPLE_BODY, **ADVANCED_BODY},
    {"description": "what the content-dependent steps would decide", "content": {"application/json": {
        "schema": DECISIONS}}},
    (400, 413, 415, 422, 500, 502)))
async def decisions(request: Request):
    """What the steps whose work depends on the photo would decide for it (deblur: sharp, defocus or motion),
    without running anything: for a time estimate before a run (a sharp photo skips the network). Steps whose
    stage is down or cannot tell are left out."""
    data, _, steps = await upload_with_mode(request)
    client: StageClient = request.app.state.client
    deciding = []
    for step in steps:
        with contextlib.suppress(StageError):
            if (await client.info(step.service)).get("decides"):
                deciding.append(step)
    answers = await asyncio.gather(*(client.decide(step.service, data, step.params) for step in deciding))
    return {"decisions": {step.name: answer for step, answer in zip(deciding, answers) if answer is not None}}


def checked_job_id(job_id: str) -> str:
    """Ids are short tokens; anything else is unknown, and is not echoed back."""
    if not JOB_ID.match(job_id):
        raise StageError("no such job (unknown, or its result expired)", code="job_not_found", status=404)
    return job_id


@app.get("/v1/jobs/{job_id}", responses=error_responses((404, 500)))
async def job_status(job_id: str, request: Request):
    return await run_in_threadpool(request.app.state.jobs.status, checked_job_id(job_id))


@app.get("/v1/jobs/{job_id}/result", response_class=Response, responses={
    "200": image_response("the result (PNG)"), **error_responses((404, 409, 500))})
async def job_result(job_id: str, request: Request):
    image, outcome = await run_in_threadpool(request.app.state.jobs.result, checked_job_id(job_id))
    return Response(image, media_type="image/png", headers=result_headers(outcome))


@app.delete("/v1/jobs/{job_id}", responses=error_responses((404, 500)))
async def cancel_job(job_id: str, request: Request):
    """Cancel a queued or running job: it leaves the queue at once; a running stage's request is closed."""
    return await run_in_threadpool(request.app.state.jobs.cancel, checked_job_id(job_id))
