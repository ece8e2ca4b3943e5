"""Send issue 11's bad inputs to a running gateway and stage; print each answer's status (and body size).

``python -m tools.probe_bad_inputs --gateway http://127.0.0.1:8000 --stage http://127.0.0.1:8101``
Used to compare a tree before and after hardening; it changes nothing on the services.
"""
from __future__ import annotations

import argparse
import io
import time

import httpx
import numpy as np
from PIL import Image


def png(size: int = 64) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def chunked(url: str, head: bytes, filler: int) -> str:
    boundary = "probe"

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               "Content-Type: image/png\r\n\r\n").encode() + head
        block, sent = bytes(1 << 20), 0
        while sent < filler:
            sent += len(block)
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()
    try:
        return str(httpx.post(url, content=body(), timeout=300,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--stage", required=True, help="the upscale stage's URL")
    args = parser.parse_args()
    g, image = args.gateway, png()

    def form(path: str, base: str | None = None, data: bytes | None = None, **fields) -> str:
        try:
            r = httpx.post((base or g) + path, files={"image": ("a.png", data or image, "image/png")}, data=fields,
                           timeout=300)
            return f"{r.status_code} ({len(r.content)} B)"
        except httpx.HTTPError as exc:
            return type(exc).__name__

    probes = {
        "chunked 200 MB upload to /v1/restore": lambda: chunked(g + "/v1/restore", image, 200 << 20),
        "PNG + 99 MB of zeros to /v1/restore": lambda: form("/v1/restore", data=image + bytes(99 << 20),
                                                           colorize="off"),
        "chunked 300 MB upload to a stage's /process": lambda: chunked(args.stage + "/process", image, 300 << 20),
        "400-digit integer for a float param": lambda: form(
            "/v1/pipeline", stages='[{"stage": "sharpen", "params": {"sharpen_amount": ' + "9" * 400 + "}}]"),
        "NaN for upscale tile": lambda: form("/v1/pipeline", stages='[{"stage": "upscale", "params": {"tile": NaN}}]'),
        "Infinity for upscale tile (stage)": lambda: form("/process", args.stage, params='{"tile": Infinity}'),
        "5001-digit integer": lambda: form(
            "/v1/pipeline", stages='[{"stage": "sharpen", "params": {"sharpen_amount": ' + "1" * 5001 + "}}]"),
        "50,000 nested [ in params (stage)": lambda: form("/process", args.stage, params="[" * 50000),
        "50,000 nested [ in stages": lambda: form("/v1/pipeline", stages="[" * 50000),
        "upscale=xx2": lambda: form("/v1/restore", colorize="off", upscale="xx2"),
        "unknown form field (colourise=on)": lambda: form("/v1/restore", colourise="on", upscale="none"),
        "10,000-char job id": lambda: (lambda r: f"{r.status_code} ({len(r.content)} B)")(
            httpx.get(g + "/v1/jobs/" + "j" * 10000, timeout=30)),
        "Allow on PUT /v1/jobs/{id}": lambda: httpx.put(g + "/v1/jobs/abc", timeout=30).headers.get("allow"),
    }
    for name, probe in probes.items():
        started = time.monotonic()
        print(f"| {name} | {probe()} | {time.monotonic() - started:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
