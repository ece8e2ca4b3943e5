"""Asynchronous jobs, API side: enqueue, read status and results, cancel. Chains run in gateway/worker.py.

Everything here goes through the JobStore (Redis or SQLite), so any number of API processes see the same
jobs, and an API process can die or restart without losing one.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import asdict
from typing import Any

from shared.contract import StageError

from .chains import ChainOutcome, Step, StepTiming
from .jobs_store import ACTIVE_STATES, FINAL_STATES, JobSettings, JobStore


class JobQueueFull(StageError):
    status = 429
    code = "queue_full"


def new_record(mode: str, steps: list[Step]) -> dict[str, Any]:
    now = time.time()
    return {"id": secrets.token_urlsafe(18), "mode": mode, "steps": [asdict(s) for s in steps],
            "state": "queued", "stage": None, "next_step": 0, "has_output": False,
            "timings": [], "skipped": [], "forwarded_headers": {}, "error": None,
            "created": now, "queued_at": now, "started": None, "finished": None,
            "attempt": 1, "lost": 0, "result_location": None}


def outcome_of(record: dict, image: bytes | None = None) -> ChainOutcome:
    return ChainOutcome(image=image, timings=[StepTiming(**t) for t in record["timings"]],
                        skipped=[tuple(s) for s in record["skipped"]],
                        forwarded_headers=dict(record["forwarded_headers"]))


def effective_state(record: dict, cancelled_at: float | None) -> tuple[str, float | None]:
    """A DELETE counts at once, before the worker has noticed it."""
    if cancelled_at is not None and record["state"] in ACTIVE_STATES:
        return "cancelled", cancelled_at
    return record["state"], record["finished"]


def status_of(record: dict, cancelled_at: float | None, heartbeat: dict | None) -> dict[str, Any]:
    state, finished = effective_state(record, cancelled_at)
    stage_progress = None
    if state == "running" and heartbeat and heartbeat.get("attempt") == record["attempt"]:
        stage_progress = heartbeat.get("stage_progress")
    steps = record["steps"]
    return {
        "id": record["id"], "mode": record["mode"], "state": state,
        "stage": record["stage"] if state in ("running", "failed") else None,
        "stages": [s["name"] for s in steps],
        "stages_done": [{"stage": t["name"], "ms": round(t["gateway_ms"], 1)} for t in record["timings"]],
        "skipped": [{"stage": n, "reason": r} for n, r in record["skipped"]],
        "progress": (len(record["timings"]) + len(record["skipped"])) / max(1, len(steps)),
        "stage_progress": stage_progress,  # the running stage's own report, 0..1; null when it gives none
        "error": record["error"], "created": record["created"], "finished": finished,
        "attempt": record["attempt"],
    }


class Jobs:
    """What the API process does with jobs. Methods block on the store: call them from a thread."""

    def __init__(self, settings: JobSettings):
        self.settings = settings
        self.store = JobStore(settings)

    def live_queued(self) -> int:
        """Messages in the queue that a worker will still run (cancelled and superseded ones do not count)."""
        pending = self.store.pending()
        ids = [job_id for job_id, _ in pending]
        records = self.store.records_of(ids)
        cancelled = self.store.cancelled_among(ids)
        return sum(1 for job_id, attempt in pending
                   if job_id not in cancelled and (r := records.get(job_id)) is not None
                   and r["state"] == "queued" and r["attempt"] == attempt)

    def submit(self, mode: str, steps: list[Step], image: bytes) -> dict:
        # The fast path reads one counter; the exact count is taken only near the limit.
        if self.store.queue_size() >= self.settings.max_queued and self.live_queued() >= self.settings.max_queued:
            raise JobQueueFull(f"the job queue is full ({self.settings.max_queued} waiting); retry later",
                               headers={"Retry-After": "10"})
        record = new_record(mode, steps)
        self.store.put_image(record["id"], image)
        self.store.put_record(record)
        self.store.enqueue(record["id"], record["attempt"])
        return status_of(record, None, None)

    def record(self, job_id: str) -> dict:
        record = self.store.record(job_id)
        if record is not None:
            _, finished = effective_state(record, self.store.cancel_time(job_id))
            if finished is not None and time.time() - finished > self.settings.result_ttl:
                record = None  # expired; a worker's reaper deletes it
        if record is None:
            raise StageError(f"no job '{job_id}' (unknown, or its result expired)", code="job_not_found",
                             status=404)
        return record

    def status(self, job_id: str) -> dict:
        record = self.record(job_id)
        return status_of(record, self.store.cancel_time(job_id), self.store.heartbeat(job_id))

    def cancel(self, job_id: str) -> dict:
        record = self.record(job_id)
        if record["state"] not in FINAL_STATES:
            self.store.request_cancel(job_id)
        return self.status(job_id)

    def result(self, job_id: str) -> tuple[bytes, ChainOutcome]:
        record = self.record(job_id)
        state, _ = effective_state(record, self.store.cancel_time(job_id))
        if state != "done":
            raise StageError(f"job '{job_id}' is {state}; no result", code="job_not_done", status=409,
                             details={"state": state})
        image = self.store.result(job_id, record["result_location"])
        if image is None:
            raise StageError(f"the result of job '{job_id}' is gone (expired)", code="job_not_found", status=404)
        return image, outcome_of(record)
