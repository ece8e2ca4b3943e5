"""Peak memory and CPU time of each service under a typical request: the figures behind deploy/k8s requests/limits.

Each stage starts alone as a real uvicorn process on a free loopback port, serves one typical request
(a ~1 MP photo; upscale x2 on 256x256: one 256-px tile of its default model) and reports its peak resident set (VmHWM) and the CPU seconds the
request took. A stage whose weights are not installed answers 503 and is reported as such.

    python -m bench.service_memory [--only denoise,upscale]
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import psutil

from bench.timing import machine

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "images"

# stage -> (params of a typical request, long side of the test photo in pixels)
TYPICAL = {
    "denoise": ({}, 1200),
    "deblur": ({}, 512),
    "colorize": ({"mode": "force"}, 1200),
    "upscale": ({"scale": 2}, 256),
    "postprocess": ({"blur_sigma": 0.5, "sharpen_amount": 0.8}, 1200),
    "repair": ({}, 1200),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photo_png(long_side: int) -> bytes:
    candidates = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    image = cv2.imread(str(candidates[0]), cv2.IMREAD_COLOR) if candidates else None
    if image is None:
        image = np.random.default_rng(0).integers(0, 255, (900, 1200, 3), np.uint8)
    scale = long_side / max(image.shape[:2])
    image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                       interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", image)[1].tobytes()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(stage: str) -> dict:
    params, long_side = TYPICAL[stage]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", f"services.{stage}.app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        idle = peak_rss_mib(proc.pid)
        process = psutil.Process(proc.pid)
        cpu_before = sum(process.cpu_times()[:2])
        started = time.perf_counter()
        response = httpx.post(url + "/process", files={"image": ("p.png", photo_png(long_side), "image/png")},
                              data={"params": json.dumps(params)}, timeout=1800)
        wall = time.perf_counter() - started
        return {"stage": stage, "status": response.status_code, "idle_mib": round(idle),
                "peak_mib": round(peak_rss_mib(proc.pid)), "cpu_s": round(sum(process.cpu_times()[:2]) - cpu_before, 1),
                "wall_s": round(wall, 1), "input_long_side": long_side}
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(TYPICAL), help="comma-separated stages")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'stage':12s} {'status':>6s} {'idle MiB':>9s} {'peak MiB':>9s} {'cpu s':>7s} {'wall s':>7s}")
    for stage in args.only.split(","):
        row = measure(stage)
        print(f"{row['stage']:12s} {row['status']:>6d} {row['idle_mib']:>9d} {row['peak_mib']:>9d} "
              f"{row['cpu_s']:>7.1f} {row['wall_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
