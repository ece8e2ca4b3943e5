"""Durable jobs over real processes: redis-server, API processes and `python -m gateway.worker` processes.

Processes are killed with SIGKILL in the middle of chains; no job may be lost or stay "running".
"""
from __future__ import annotations

import json
import time

import httpx
import numpy as np
import psutil
import pytest

from .conftest import STAGE_APPS, Process, RedisServer, base_env, free_port, worker_process
from .helpers import decode_rgb, noisy, photo, png_of, wait_for

STAGES = tuple(STAGE_APPS)
FINAL = ("done", "failed", "cancelled")


def post_job(url: str, image: bytes, **fields) -> httpx.Response:
    data = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in fields.items()}
    return httpx.post(url + "/v1/jobs", files={"image": ("photo.png", image, "image/png")}, data=data, timeout=60)


def status(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()



def denoise_chain(count: int) -> list[dict]:
    return [{"stage": "denoise", "params": {"sigma": 20}} for _ in range(count)]


class Cluster:
    """Its own redis-server plus API and worker processes started on demand, over the stack's stages."""

    def __init__(self, stack, sqlite_path=None, **job_env: str):
        self.stack = stack
        self.redis = None if sqlite_path else RedisServer(stack.log_dir)
        self.env = base_env()
        for name in STAGES:
            self.env[f"{name.upper()}_URL"] = stack.url(name)
        self.env.pop("REDIS_URL", None)
        if sqlite_path:
            self.env["JOBS_SQLITE_PATH"] = str(sqlite_path)
        else:
            self.env["REDIS_URL"] = self.redis.url
        self.env.update(JOBS_STALE_AFTER_S="3", JOBS_REAP_INTERVAL_S="0.5",
                        JOBS_HEARTBEAT_S="0.3", STAGE_TIMEOUT_S="300")
        self.env.update(job_env)
        self.processes: list[Process] = []
        self.count = 0

    def api(self) -> Process:
        self.count += 1
        process = Process(f"cluster-api-{self.count}", "gateway.app:app", free_port(), self.env)
        return self._start(process)

    def worker(self) -> Process:
        self.count += 1
        return self._start(worker_process(f"cluster-worker-{self.count}", self.env))

    def _start(self, process: Process) -> Process:
        process.start(self.stack.log_dir)
        process.wait_ready()
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture
def cluster(stack):
    made = []

    def make(sqlite_path=None, **job_env: str) -> Cluster:
        made.append(Cluster(stack, sqlite_path, **job_env))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    return png_of(noisy(np.tile(photo("astronaut"), (2, 2, 1))[:512, :512], 20))


def test_kill_9_of_api_and_worker_mid_chain_loses_no_job(cluster, noisy_png, capsys):
    jobs = cluster()
    api, worker = jobs.api(), jobs.worker()
    ids = []
    for _ in range(5):
        created = post_job(api.url, noisy_png, mode="advanced", stages=denoise_chain(3))
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    # In the middle of the first chain: one step done, the next one running.
    wait_for(lambda: (s := status(api.url, ids[0]))["state"] == "running" and len(s["stages_done"]) >= 1,
             timeout=120)
    api.kill()
    worker.kill()
    api.start(jobs.stack.log_dir)
    api.wait_ready()
    assert status(api.url, ids[0])["state"] == "running"  # its worker is gone: stale, not yet noticed
    jobs.worker()

    finals = {job_id: wait_for(lambda: (s := status(api.url, job_id))["state"] in FINAL and s, timeout=300)
              for job_id in ids}
    with capsys.disabled():
        print("\njob  state  attempt  stages_done  error")
        for index, (job_id, final) in enumerate(finals.items()):
            print(index, final["state"], final["attempt"], len(final["stages_done"]), final["error"])
    for final in finals.values():
        assert final["state"] == "done" or (final["state"] == "failed" and final["error"]["message"]), final
    assert all(f["state"] == "done" for f in finals.values())
    assert finals[ids[0]]["attempt"] >= 2, "the interrupted job was re-run"
    assert all(len(f["stages_done"]) == 3 for f in finals.values())

    second = jobs.api()  # any API process serves any job's result
    for job_id in ids:
        result = httpx.get(f"{second.url}/v1/jobs/{job_id}/result", timeout=30)
        assert result.status_code == 200 and decode_rgb(result.content).shape == (512, 512, 3)


def test_worker_sigterm_mid_chain_hands_the_job_to_another_worker(cluster, noisy_png):
    jobs = cluster()
    api, first = jobs.api(), jobs.worker()
    job_id = post_job(api.url, noisy_png, mode="advanced", stages=denoise_chain(3)).json()["id"]
    wait_for(lambda: (s := status(api.url, job_id))["state"] == "running" and len(s["stages_done"]) >= 1)
    first.stop()  # SIGTERM: the chain is stopped and queued again at once, not after the stale timeout
    assert status(api.url, job_id)["state"] == "queued"
    jobs.worker()
    final = wait_for(lambda: (s := status(api.url, job_id))["state"] in FINAL and s, timeout=300)
    assert final["state"] == "done" and final["attempt"] == 2 and len(final["stages_done"]) == 3


def test_full_queue_429_cancelled_jobs_leave_the_queue_across_processes(cluster):
    jobs = cluster(JOBS_MAX_QUEUED="8")
    api_a, api_b = jobs.api(), jobs.api()
    tiny = png_of(photo("coffee")[:48, :48])
    queued = [post_job(api_a.url, tiny, mode="advanced", stages=denoise_chain(1)) for _ in range(8)]
    assert all(r.status_code == 202 for r in queued)
    full = post_job(api_b.url, tiny, mode="advanced", stages=denoise_chain(1))  # no worker yet: queue full
    assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
    assert full.json()["error"]["code"] == "queue_full"

    for response in queued:  # cancelled through the other API process
        cancelled = httpx.delete(f"{api_b.url}/v1/jobs/{response.json()['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert all(status(api_a.url, r.json()["id"])["state"] == "cancelled" for r in queued)
    again = [post_job(api_b.url, tiny, mode="advanced", stages=denoise_chain(1)) for _ in range(8)]
    assert [r.status_code for r in again] == [202] * 8

    jobs.worker()
    for response in again:
        job_id = response.json()["id"]
        assert wait_for(lambda: status(api_a.url, job_id)["state"] in FINAL and status(api_a.url, job_id),
                        timeout=120)["state"] == "done"
    for response in queued:  # the cancelled ones never ran
        final = status(api_a.url, response.json()["id"])
        assert final["state"] == "cancelled" and final["stages_done"] == []


def test_cancel_a_running_job_through_another_api_process(cluster, noisy_png):
    jobs = cluster()
    api_a, api_b = jobs.api(), jobs.api()
    jobs.worker()
    job_id = post_job(api_a.url, noisy_png, mode="advanced", stages=denoise_chain(6)).json()["id"]
    wait_for(lambda: status(api_a.url, job_id)["state"] == "running")
    assert httpx.delete(f"{api_b.url}/v1/jobs/{job_id}").json()["state"] == "cancelled"
    # The worker stops the chain: its record turns final without waiting for the remaining steps.
    final = wait_for(lambda: (s := status(api_a.url, job_id))["state"] == "cancelled" and s["finished"] and s)
    assert len(final["stages_done"]) < 6
    assert httpx.get(f"{api_a.url}/v1/jobs/{job_id}/result").status_code == 409
    small = post_job(api_b.url, png_of(photo("coffee")[:48, :48]), mode="advanced", stages=denoise_chain(1))
    small_id = small.json()["id"]
    assert wait_for(lambda: status(api_a.url, small_id)["state"] in FINAL and status(api_a.url, small_id),
                    timeout=120)["state"] == "done"


def test_embedded_sqlite_backend_without_redis_keeps_jobs_across_a_restart(cluster, tmp_path):
    jobs = cluster(sqlite_path=tmp_path / "jobs.sqlite3")
    api, worker = jobs.api(), jobs.worker()
    tiny = png_of(photo("coffee")[:48, :48])
    job_id = post_job(api.url, tiny, mode="advanced", stages=denoise_chain(1)).json()["id"]
    assert wait_for(lambda: status(api.url, job_id)["state"] in FINAL and status(api.url, job_id),
                    timeout=120)["state"] == "done"
    worker.stop()
    queued_id = post_job(api.url, tiny, mode="advanced", stages=denoise_chain(1)).json()["id"]
    api.stop()
    api.start(jobs.stack.log_dir)  # a new API process on the same file sees both jobs
    api.wait_ready()
    assert status(api.url, job_id)["state"] == "done" and status(api.url, queued_id)["state"] == "queued"
    assert httpx.get(f"{api.url}/v1/jobs/{job_id}/result").status_code == 200
    jobs.worker()
    assert wait_for(lambda: status(api.url, queued_id)["state"] in FINAL and status(api.url, queued_id),
                    timeout=120)["state"] == "done"


# --- stage side: progress and abort (X-Request-Id, GET /progress/{id}, abort on disconnect) ---------------
def x4plus_job_fields(tile: int) -> dict:
    return {"mode": "advanced", "stages": [{"stage": "upscale", "params": {"model": "RealESRGAN_x4plus", "scale": 4,
                                                                              "tile": tile}}]}


def test_stage_progress_rises_during_a_tiled_stage(stack):
    gateway = stack.url("gateway")
    created = post_job(gateway, png_of(photo("coffee")[:128, :128]), **x4plus_job_fields(48))
    job_id = created.json()["id"]
    seen: list[float] = []

    def finished():
        current = status(gateway, job_id)
        if current["stage_progress"] is not None and (not seen or current["stage_progress"] != seen[-1]):
            seen.append(current["stage_progress"])
        return current["state"] in FINAL and current

    assert wait_for(finished, timeout=600, interval=0.1)["state"] == "done"
    assert len(seen) >= 3 and seen == sorted(seen), seen


def test_delete_of_a_running_job_leaves_the_stage_idle_within_2_s(stack):
    gateway = stack.url("gateway")
    stage = psutil.Process(stack.processes["upscale"].proc.pid)
    job_id = post_job(gateway, png_of(photo("coffee")[:256, :256]), **x4plus_job_fields(64)).json()["id"]
    wait_for(lambda: (status(gateway, job_id)["stage_progress"] or 0) > 0, timeout=300)
    httpx.delete(f"{gateway}/v1/jobs/{job_id}")
    time.sleep(2.0)
    before = sum(stage.cpu_times()[:2])
    time.sleep(1.0)
    assert sum(stage.cpu_times()[:2]) - before < 0.2, "the stage kept computing after the job was cancelled"
    started = time.monotonic()
    small = httpx.post(stack.url("upscale") + "/process", files={"image": ("a.png", png_of(photo("coffee")[:16, :16]))},
                       data={"params": json.dumps({"model": "RealESRGAN_x4plus", "scale": 2})}, timeout=120)
    assert small.status_code == 200 and time.monotonic() - started < 30
