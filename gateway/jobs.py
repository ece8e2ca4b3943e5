"""Asynchronous jobs: a bounded queue of chains run by a few workers, with per-stage progress and cancel."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from shared.contract import StageError, error_body
from shared.imaging import decode_image, encode_png

from .chains import ChainOutcome, Step, run_chain
from .client import StageClient

ACTIVE_STATES = ("queued", "running")
log = logging.getLogger("restore.gateway.jobs")


@dataclass
class Job:
    id: str
    mode: str
    steps: list[Step]
    image: bytes
    state: str = "queued"
    stage: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    outcome: ChainOutcome | None = None
    error: dict | None = None
    task: asyncio.Task | None = None

    def status(self) -> dict[str, Any]:
        outcome = self.outcome or ChainOutcome(image=None)
        return {
            "id": self.id, "mode": self.mode, "state": self.state, "stage": self.stage,
            "stages": [s.name for s in self.steps],
            "stages_done": [{"stage": t.name, "ms": round(t.gateway_ms, 1)} for t in outcome.timings],
            "skipped": [{"stage": n, "reason": r} for n, r in outcome.skipped],
            "progress": (len(outcome.timings) + len(outcome.skipped)) / max(1, len(self.steps)),
            "error": self.error, "created": self.created, "finished": self.finished,
        }


class JobQueueFull(StageError):
    status = 429
    code = "queue_full"


class JobManager:
    def __init__(self, client: StageClient, *, max_queued: int, workers: int, result_ttl: float):
        self.client = client
        self.max_queued = max_queued
        self.worker_count = workers
        self.result_ttl = result_ttl
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queued)
        self.workers: list[asyncio.Task] = []

    def start(self) -> None:
        self.workers = [asyncio.create_task(self._worker()) for _ in range(self.worker_count)]

    async def stop(self) -> None:
        for worker in self.workers:
            worker.cancel()
        for job in self.jobs.values():
            if job.task is not None:
                job.task.cancel()

    def submit(self, mode: str, steps: list[Step], image: bytes) -> Job:
        self.expire()
        job = Job(id=secrets.token_urlsafe(18), mode=mode, steps=steps, image=image)
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise JobQueueFull(f"the job queue is full ({self.max_queued} waiting); retry later",
                               headers={"Retry-After": "10"}) from None
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        self.expire()
        job = self.jobs.get(job_id)
        if job is None:
            raise StageError(f"no job '{job_id}' (unknown, or its result expired)", code="job_not_found",
                             status=404)
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state in ACTIVE_STATES:
            job.state, job.finished, job.image = "cancelled", time.time(), b""
            if job.task is not None:
                job.task.cancel()
        return job

    def expire(self) -> None:
        now = time.time()
        for job_id in [j.id for j in self.jobs.values()
                       if j.finished is not None and now - j.finished > self.result_ttl]:
            del self.jobs[job_id]

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                if job.state == "queued":
                    await self._run(job)
            finally:
                self.queue.task_done()

    async def _run(self, job: Job) -> None:
        job.state = "running"
        job.outcome = ChainOutcome(image=None)

        async def on_step_start(name: str, index: int, total: int) -> None:
            job.stage = name

        # The chain runs in its own task so that DELETE can cancel it without stopping the worker.
        job.task = asyncio.create_task(run_chain(self.client, job.image, job.steps, on_step_start, job.outcome))
        try:
            await job.task
            if job.outcome.image is None:  # every stage skipped: the result is the upload as PNG
                upload = job.image
                job.outcome.image = await run_in_threadpool(lambda: encode_png(decode_image(upload, 1 << 40)))
            job.state = "done"
        except asyncio.CancelledError:
            if job.state != "cancelled":  # the worker itself is being stopped
                raise
        except StageError as exc:
            job.state, job.error = "failed", exc.body()["error"]
        except Exception:  # a bug must still leave the job in a final state; its details go to the log
            log.exception("job %s failed unexpectedly", job.id)
            job.state = "failed"
            job.error = error_body("internal_error", "internal error; the details are in the service log")["error"]
        finally:
            if job.state != "failed":
                job.stage = None
            job.finished = job.finished or time.time()
            job.image = b""  # the upload is no longer needed; the result stays until it expires
