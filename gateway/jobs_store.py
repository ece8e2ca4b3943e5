"""Where durable jobs live: a huey queue plus job records, heartbeats and images, on Redis or SQLite.

huey (https://huey.readthedocs.io) gives both backends one API: ``RedisHuey`` when ``REDIS_URL`` is set,
otherwise ``SqliteHuey`` on a local file, so ``make run`` works without a server. Besides its queue, huey's
storage is a key-value store (put/peek/put_if_empty), used here for

  job:<id>     the job record (JSON): steps, state, checkpoint (next step), timings, error, attempt token
  cancel:<id>  when DELETE asked for the job to stop (written only by the API)
  hb:<id>      the running worker's heartbeat and the stage's own progress (written only by that worker)
  claim:<id>:<attempt>  which worker runs an attempt (put_if_empty: a duplicated message runs once)

and, in a second namespace so that scanning the records never loads pixels,

  img:<id>     the upload, then the image after each finished step (the checkpoint a retry resumes from)
  result:<id>  the finished image, up to ``JOBS_RESULT_MAX_BYTES``; bigger ones go to ``JOBS_RESULTS_DIR``.

huey pops a message without an acknowledgement, so a worker killed mid-chain would lose its job. The
heartbeat makes that visible: a worker's reaper puts a "running" job whose heartbeat is stale back in the
queue with a new attempt token, and it resumes at the step that was interrupted (gateway/worker.py).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from huey import RedisHuey, SqliteHuey
from huey.constants import EmptyData
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

QUEUE_TASK_NAME = "run_job"
FINAL_STATES = ("done", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")


class JobSettings(BaseSettings):
    """Environment of the API process and of the workers (both must agree on the backend)."""
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    sqlite_path: Path = Field(Path(os.path.expanduser("~/.cache/photo-restore/jobs.sqlite3")),
                              validation_alias="JOBS_SQLITE_PATH")
    queue_name: str = Field("restore", validation_alias="JOBS_QUEUE_NAME")
    max_queued: int = Field(8, ge=1, validation_alias="JOBS_MAX_QUEUED")
    result_ttl: float = Field(3600, gt=0, validation_alias="JOBS_RESULT_TTL_S")
    result_max_bytes: int = Field(64 << 20, ge=1, validation_alias="JOBS_RESULT_MAX_BYTES")
    results_dir: Path | None = Field(None, validation_alias="JOBS_RESULTS_DIR")
    workers: int = Field(1, ge=1, validation_alias="JOBS_WORKERS")
    heartbeat_interval: float = Field(1.0, gt=0, validation_alias="JOBS_HEARTBEAT_S")
    stale_after: float = Field(15.0, gt=0, validation_alias="JOBS_STALE_AFTER_S")
    max_lost: int = Field(2, ge=0, validation_alias="JOBS_MAX_LOST")
    reap_interval: float = Field(2.0, gt=0, validation_alias="JOBS_REAP_INTERVAL_S")
    progress_poll: float = Field(0.5, gt=0, validation_alias="JOBS_PROGRESS_POLL_S")

    @property
    def backend(self) -> str:
        return "redis" if self.redis_url else "sqlite"


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _loads(raw: Any) -> Any:
    return None if raw is EmptyData or raw is None else json.loads(raw)


class JobStore:
    def __init__(self, settings: JobSettings):
        self.settings = settings
        name = settings.queue_name
        # results=False: a job's outcome is its record, not huey's task return value.
        if settings.redis_url:
            self.huey = RedisHuey(name, results=False, url=settings.redis_url)
            self.blobs = RedisHuey(f"{name}_blobs", results=False, connection_pool=self.huey.storage.pool)
        else:
            settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self.huey = SqliteHuey(name, results=False, filename=str(settings.sqlite_path))
            self.blobs = SqliteHuey(f"{name}_blobs", results=False, filename=str(settings.sqlite_path))
        self.kv = self.huey.storage
        self.executor: Callable[[str, int], None] | None = None
        # The API only enqueues this task; a worker sets ``executor`` and huey's consumer calls it.
        self.run_task = self.huey.task(name=QUEUE_TASK_NAME)(self._execute)

    def _execute(self, job_id: str, attempt: int) -> None:
        if self.executor is None:
            raise RuntimeError("this process enqueues jobs but does not run them (start python -m gateway.worker)")
        self.executor(job_id, attempt)

    def ping(self) -> None:
        self.kv.queue_size()

    # --- queue -------------------------------------------------------------------------------------------
    def enqueue(self, job_id: str, attempt: int) -> None:
        self.run_task(job_id, attempt)

    def queue_size(self) -> int:
        return self.kv.queue_size()

    def pending(self) -> list[tuple[str, int]]:
        """(job id, attempt) of every message still in the queue."""
        return [(task.args[0], task.args[1]) for task in self.huey.pending() if len(task.args) == 2]

    # --- records -----------------------------------------------------------------------------------------
    def record(self, job_id: str) -> dict | None:
        return _loads(self.kv.peek_data(f"job:{job_id}"))

    def put_record(self, record: dict) -> None:
        self.kv.put_data(f"job:{record['id']}", _dumps(record))

    def records(self) -> list[dict]:
        """Every job record (small JSON; images live in the other namespace)."""
        return [json.loads(value) for key, value in self.kv.result_items().items() if key.startswith("job:")]

    def records_of(self, job_ids: list[str]) -> dict[str, dict]:
        found = self.kv.peek_many([f"job:{j}" for j in job_ids]) if job_ids else {}
        return {key.decode()[4:] if isinstance(key, bytes) else key[4:]: json.loads(value)
                for key, value in found.items()}

    def cancel_time(self, job_id: str) -> float | None:
        return _loads(self.kv.peek_data(f"cancel:{job_id}"))

    def cancelled_among(self, job_ids: list[str]) -> set[str]:
        found = self.kv.peek_many([f"cancel:{j}" for j in job_ids]) if job_ids else {}
        return {(k.decode() if isinstance(k, bytes) else k)[7:] for k in found}

    def request_cancel(self, job_id: str) -> float:
        when = time.time()
        self.kv.put_if_empty(f"cancel:{job_id}", _dumps(when))
        return self.cancel_time(job_id) or when

    def heartbeat(self, job_id: str) -> dict | None:
        return _loads(self.kv.peek_data(f"hb:{job_id}"))

    def put_heartbeat(self, job_id: str, beat: dict) -> None:
        self.kv.put_data(f"hb:{job_id}", _dumps(beat))

    def claim(self, job_id: str, attempt: int, worker: str) -> bool:
        return self.kv.put_if_empty(f"claim:{job_id}:{attempt}", worker.encode())

    def is_claimed(self, job_id: str, attempt: int) -> bool:
        return self.kv.has_data_for_key(f"claim:{job_id}:{attempt}")

    # --- images ------------------------------------------------------------------------------------------
    def put_image(self, job_id: str, data: bytes) -> None:
        self.blobs.storage.put_data(f"img:{job_id}", data)

    def image(self, job_id: str) -> bytes | None:
        raw = self.blobs.storage.peek_data(f"img:{job_id}")
        return None if raw is EmptyData else bytes(raw)

    # --- results: one interface over the store (small) and the results directory (large) ----------------
    def put_result(self, job_id: str, data: bytes) -> str:
        """Keep a finished image; returns where ("store" or "dir"). Raises ValueError when it fits nowhere."""
        if len(data) <= self.settings.result_max_bytes:
            self.blobs.storage.put_data(f"result:{job_id}", data)
            return "store"
        if self.settings.results_dir is None:
            raise ValueError(f"the result is {len(data)} bytes, over JOBS_RESULT_MAX_BYTES="
                             f"{self.settings.result_max_bytes}, and no JOBS_RESULTS_DIR is set")
        self.settings.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.results_dir / f"{job_id}.png"
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half a file
        return "dir"

    def result(self, job_id: str, location: str | None) -> bytes | None:
        if location == "dir" and self.settings.results_dir is not None:
            path = self.settings.results_dir / f"{job_id}.png"
            return path.read_bytes() if path.is_file() else None
        raw = self.blobs.storage.peek_data(f"result:{job_id}")
        return None if raw is EmptyData else bytes(raw)

    def drop_images(self, job_id: str) -> None:
        self.blobs.storage.delete_data(f"img:{job_id}")

    def delete_job(self, job_id: str) -> None:
        """Everything of one job: record, flags, images, result."""
        record = self.record(job_id)
        for key in (f"job:{job_id}", f"cancel:{job_id}", f"hb:{job_id}"):
            self.kv.delete_data(key)
        for attempt in range(1, (record or {}).get("attempt", 0) + 1):
            self.kv.delete_data(f"claim:{job_id}:{attempt}")
        self.blobs.storage.delete_data(f"img:{job_id}")
        self.blobs.storage.delete_data(f"result:{job_id}")
        if self.settings.results_dir is not None:
            (self.settings.results_dir / f"{job_id}.png").unlink(missing_ok=True)
