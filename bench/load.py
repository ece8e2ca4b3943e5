"""Load benchmark of durable jobs: N concurrent small-photo jobs through the API, on loopback only.

Starts its own redis-server (huey's SQLite backend when none is on PATH), two upscale replicas, one denoise and
one postprocess stage, then for each configuration (1 or 2 worker processes) x (1 or 2 upscale replicas) a
fresh API process and workers, submits N jobs at once (denoise -> upscale x2 with the compact
realesr-animevideov3 model -> sharpen on a 128x128 photo) and waits for all of them. Prints throughput,
p50/p95 of submit-to-done latency, and that every job finished. Ratios are against the 1 worker / 1 replica
run of the same process. Bounded: each configuration gives up after --timeout seconds.

    python -m bench.load [--jobs 12] [--timeout 600]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

from bench.timing import machine

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "images"
CHAIN = [{"stage": "denoise"},
         {"stage": "upscale", "params": {"model": "realesr-animevideov3", "scale": 2}},
         {"stage": "sharpen", "params": {"sharpen_amount": 0.6}}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_photo(index: int) -> bytes:
    candidates = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    image = cv2.imread(str(candidates[index % len(candidates)])) if candidates else None
    if image is None:
        image = np.random.default_rng(index).integers(0, 255, (128, 128, 3), np.uint8)
    return cv2.imencode(".png", cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA))[1].tobytes()


class Procs:
    def __init__(self, log_dir: Path):
        self.log_dir, self.all = log_dir, []

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(self.log_dir / f"{name}.log", "ab"),
                                stderr=subprocess.STDOUT)
        self.all.append(proc)
        return proc

    def uvicorn(self, name: str, app: str, env: dict) -> str:
        port = free_port()
        self.start(name, [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                          "--log-level", "warning"], env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{name} did not start; see {self.log_dir}")

    @staticmethod
    def stop(procs: list[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_jobs(api: str, count: int, timeout: float) -> tuple[list[float], int, float]:
    """Latencies of finished jobs, how many ended done, and the makespan."""
    started = time.perf_counter()

    def one(index: int) -> tuple[float, str]:
        t0 = time.perf_counter()
        response = httpx.post(api + "/v1/jobs", files={"image": ("p.png", small_photo(index), "image/png")},
                              data={"mode": "advanced", "stages": json.dumps(CHAIN)}, timeout=60)
        if response.status_code != 202:
            return time.perf_counter() - t0, f"submit {response.status_code}"
        job_id = response.json()["id"]
        while time.perf_counter() - started < timeout:
            state = httpx.get(f"{api}/v1/jobs/{job_id}", timeout=10).json()["state"]
            if state in ("done", "failed", "cancelled"):
                return time.perf_counter() - t0, state
            time.sleep(0.1)
        return time.perf_counter() - t0, "timeout"

    with ThreadPoolExecutor(count) as pool:
        outcomes = list(pool.map(one, range(count)))
    makespan = time.perf_counter() - started
    return [t for t, _ in outcomes], sum(1 for _, s in outcomes if s == "done"), makespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    procs = Procs(log_dir)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", STAGE_CONCURRENCY="1")
    env.pop("REDIS_URL", None)
    try:
        redis = shutil.which("redis-server")
        if redis:
            port = free_port()
            procs.start("redis", [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                  "no", "--dir", str(log_dir)], env)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
            time.sleep(0.5)
        else:
            env["JOBS_SQLITE_PATH"] = str(log_dir / "jobs.sqlite3")
        stages = {name: procs.uvicorn(name, f"services.{name}.app:app", env) for name in ("denoise", "postprocess")}
        upscale = [procs.uvicorn(f"upscale-{i}", "services.upscale.app:app", env) for i in range(2)]
        print(f"machine: {machine()}; {args.jobs} jobs per run; backend "
              f"{'redis' if redis else 'sqlite'}; chain {[s['stage'] for s in CHAIN]} on 128x128")
        print(f"{'workers':>7s} {'replicas':>8s} {'jobs/min':>9s} {'ratio':>6s} {'p50 s':>7s} {'p95 s':>7s} "
              f"{'done':>6s}")
        baseline = None
        for workers in (1, 2):
            for replicas in (1, 2):
                run_env = dict(env, DENOISE_URL=stages["denoise"], POSTPROCESS_URL=stages["postprocess"],
                               UPSCALE_URL=",".join(upscale[:replicas]), JOBS_MAX_QUEUED=str(args.jobs * 2),
                               JOBS_QUEUE_NAME=f"load_{workers}_{replicas}", JOBS_WORKERS="1")
                tag = f"w{workers}r{replicas}"
                api = procs.uvicorn(f"api-{tag}", "gateway.app:app", run_env)
                api_proc = procs.all[-1]
                worker_procs = [procs.start(f"worker-{tag}-{i}", [sys.executable, "-m", "gateway.worker"], run_env)
                                for i in range(workers)]
                time.sleep(1.0)
                latencies, done, makespan = run_jobs(api, args.jobs, args.timeout)
                peaks = [peak_rss_mib(p.pid) for p in [api_proc] + worker_procs]
                Procs.stop(worker_procs + [api_proc])
                throughput = done / makespan * 60
                baseline = baseline or throughput
                ordered = sorted(latencies)
                p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
                print(f"{workers:>7d} {replicas:>8d} {throughput:>9.1f} {throughput / baseline:>6.2f} "
                      f"{statistics.median(latencies):>7.1f} {p95:>7.1f} {done:>3d}/{args.jobs:<2d}"
                      f"   peak RSS MiB: API {peaks[0]:.0f}, workers {', '.join(f'{p:.0f}' for p in peaks[1:])}",
                      flush=True)
                if done != args.jobs:
                    print(f"  not every job finished; logs in {log_dir}")
    finally:
        Procs.stop(procs.all)


if __name__ == "__main__":
    main()
