"""A stage process that answers what a broken or hostile stage might, for the gateway's fault tests.

It is never part of the serving path: tests point one of the gateway's stage URLs at it and choose the
answer with ``POST /mode/<name>``.
"""
from __future__ import annotations

import io

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from PIL import Image

app = FastAPI()
state = {"mode": "ok"}


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(out, "PNG")
    return out.getvalue()


@app.post("/mode/{mode}")
async def set_mode(mode: str):
    state["mode"] = mode
    return {"mode": mode}


@app.get("/health")
async def health():
    return {"status": "ok", "stage": "denoise", "models": {}}


@app.get("/info")
async def info():
    return {"stage": "denoise", "description": "fault injection", "params": [], "models": {}}


@app.post("/process")
async def process(request: Request):
    if request.headers.get("content-type", "").startswith("multipart/"):
        form = await request.form()
        data = await form["image"].read()
    else:  # the gateway sends the image as the whole body
        data = await request.body()
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
    mode = state["mode"]
    if mode == "ok":
        return Response(png(width, height), media_type="image/png")
    if mode == "not_png":
        return Response(b"<html>definitely not an image</html>", media_type="image/png")
    if mode == "text":
        return Response(png(width, height), media_type="text/plain")
    if mode == "empty":
        return Response(b"", media_type="image/png")
    if mode == "truncated":
        return Response(png(width, height)[:-30], media_type="image/png")
    if mode == "wrong_size":
        return Response(png(width + 1, height), media_type="image/png")
    if mode == "error_str_500":
        return JSONResponse({"error": "str"}, status_code=500)
    if mode == "error_str_422":
        return JSONResponse({"error": "str"}, status_code=422)
    if mode == "error_list":
        return JSONResponse([1, 2], status_code=400)
    if mode == "redirect":
        return RedirectResponse("http://example.invalid/elsewhere", status_code=307)
    if mode == "unauthorized":
        return JSONResponse({"error": {"code": "auth", "message": "who are you"}}, status_code=401)
    if mode == "leaky_500":
        return JSONResponse({"error": {"code": "internal_error", "message": "Traceback /root/.cache/x.pth"}},
                            status_code=500)
    raise ValueError(mode)
