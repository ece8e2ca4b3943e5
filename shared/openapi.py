"""What the services' OpenAPI documents declare for their hand-read multipart endpoints, and the error
handlers that make every error (ours, FastAPI's own 404/405/422, and bugs) the same JSON shape.

The endpoints read their bodies themselves (``shared.upload``: byte limit while streaming), so FastAPI cannot
infer the request bodies; they are declared here, with the image responses and the error responses.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .contract import PARAMS_HEADER, StageError, error_body
from .imaging import RAW_BODY_TYPES

log = logging.getLogger("restore.errors")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {
            "code": {"type": "string", "description": "stable machine-readable code"},
            "message": {"type": "string", "description": "what is wrong, for people"},
            "stage": {"type": ["string", "null"], "description": "the stage or step concerned"},
            "field": {"type": ["string", "null"], "description": "the offending field (422)"},
        },
        "additionalProperties": True}},
}

ERROR_DESCRIPTIONS = {
    400: "empty, corrupt or malformed upload",
    404: "unknown resource",
    409: "not in a state that allows this",
    413: "upload over the byte limit or image over the pixel limit",
    415: "not a JPEG or PNG image",
    422: "bad parameter or form field (the error names it in `field`)",
    429: "queue full; retry after the Retry-After header",
    500: "internal error (details in the service log)",
    502: "a stage is down or answered something unusable",
    503: "a model is not installed (the error names the fetch command)",
    504: "a stage did not answer within its timeout",
}


def error_responses(statuses: Iterable[int]) -> dict[str, Any]:
    return {str(status): {"description": ERROR_DESCRIPTIONS[status],
                          "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status in statuses}


def image_response(description: str, media_types: Iterable[str] = ("image/png",)) -> dict[str, Any]:
    return {"description": description,
            "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in media_types}}


def multipart_body(fields: dict[str, dict[str, Any]], required: Iterable[str] = ("image",)) -> dict[str, Any]:
    """A multipart/form-data request body: the ``image`` file (JPEG or PNG) plus the text ``fields``."""
    properties = {"image": {"type": "string", "format": "binary", "description": "JPEG or PNG file"}, **fields}
    return {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": list(required),
                   "additionalProperties": False},
        "encoding": {"image": {"contentType": "image/png, image/jpeg"}}}}}


def endpoint_openapi(fields: dict[str, dict[str, Any]], ok: dict[str, Any], errors: Iterable[int],
                     ok_status: int = 200) -> dict[str, Any]:
    """``openapi_extra`` for a multipart endpoint: its body, its success answer, its error answers."""
    return {"requestBody": multipart_body(fields),
            "responses": {str(ok_status): ok, **error_responses(errors)}}


PARAMS_FIELD = {"type": "string", "description": "JSON object of the stage's parameters (see /info)",
                "example": "{}"}
# /process also takes the image alone as the body (image/png, image/jpeg or the gateway's raster transport)
# with the params in the X-Stage-Params header.
STAGE_PROCESS_OPENAPI = endpoint_openapi(
    {"params": PARAMS_FIELD},
    image_response("the processed image (lossless PNG) with X-Process-Time-Ms and X-Image-Size"),
    (400, 413, 415, 422, 500, 503))
STAGE_PROCESS_OPENAPI["requestBody"]["content"].update(
    {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in RAW_BODY_TYPES})
STAGE_PROCESS_OPENAPI["parameters"] = [{
    "name": PARAMS_HEADER, "in": "header", "required": False, "schema": PARAMS_FIELD,
    "description": "with an image body: the JSON object of the stage's parameters (the multipart form's params)"}]
STAGE_DECIDE_OPENAPI = endpoint_openapi(
    {"params": PARAMS_FIELD},
    {"description": "what /process would decide for this image",
     "content": {"application/json": {"schema": {
         "type": "object", "required": ["stage", "decision"],
         "properties": {"stage": {"type": "string"}, "decision": {"type": "string"}}}}}},
    (400, 413, 415, 422, 500))


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    from starlette.routing import Match
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "__NONE__"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def install_error_handlers(app: FastAPI, stage: str | None = None) -> None:
    """Every error answer is ``{"error": {"code", "message", "stage"}}``; internals go to the log only."""

    @app.exception_handler(StageError)
    async def stage_error(_: Request, exc: StageError):
        exc.stage = exc.stage or stage
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # starlette names the methods of the first route matching the path; a path served by several
            # routes (GET and DELETE /v1/jobs/{id}) allows all of theirs
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        return JSONResponse(error_body(code, message, stage), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        body = error_body("invalid_params", f"{field or 'request'}: {first.get('msg', 'invalid')}", stage)
        body["error"]["field"] = field
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error; the details are in the service log",
                                       stage), status_code=500)
