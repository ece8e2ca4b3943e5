"""Chain worker: ``python -m gateway.worker`` runs queued jobs; start as many processes as the load needs.

huey's consumer pops messages and runs them in ``JOBS_WORKERS`` threads; each thread hands its job to one
event loop shared by the process (one pooled HTTP client, one view of stage replicas). While a chain runs, a
watcher beats the job's heartbeat, copies the stage's own progress into it and cancels the chain when DELETE
asked for it: cancelling closes the stage's /process connection, which stops the stage's work.

A reaper thread in every worker process keeps the store honest: a "running" job whose heartbeat went stale
(its worker was killed) is queued again and resumes at the interrupted step, or fails with a reason after
``JOBS_MAX_LOST`` losses; cancelled queued jobs are closed; finished jobs are deleted after their TTL.
SIGTERM or Ctrl-C: running chains are stopped (their stage requests closed) and put back in the queue.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from shared.contract import StageError, error_body
from shared.imaging import decode_image, encode_png
from shared.settings import load_settings

from .chains import ChainOutcome, Step, run_chain
from .client import StageClient
from .jobs import outcome_of
from .jobs_store import ACTIVE_STATES, FINAL_STATES, JobSettings, JobStore
from .settings import Settings

log = logging.getLogger("restore.worker")


class Stopping(Exception):
    """The worker is shutting down: the job goes back to the queue."""


class Runner:
    def __init__(self, store: JobStore, settings: JobSettings, client: StageClient, loop: asyncio.AbstractEventLoop):
        self.store, self.settings, self.client, self.loop = store, settings, client, loop
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.running: dict[str, asyncio.Task] = {}   # job id -> its chain
        self.active: set[asyncio.Task] = set()         # the run() of every job in hand
        self.stopping = False

    # Called by huey's worker threads.
    def execute(self, job_id: str, attempt: int) -> None:
        if self.stopping:
            self.store.enqueue(job_id, attempt)  # popped during shutdown: leave it for another worker
            return
        asyncio.run_coroutine_threadsafe(self.run(job_id, attempt), self.loop).result()

    def _owns(self, job_id: str, attempt: int) -> dict | None:
        """The record, if this attempt is still the current one (the reaper may have handed the job on)."""
        record = self.store.record(job_id)
        return record if record is not None and record["attempt"] == attempt else None

    def _save(self, record: dict, **changes: Any) -> None:
        if self._owns(record["id"], record["attempt"]) is None:
            raise Stopping("superseded")
        record.update(changes)
        self.store.put_record(record)

    async def run(self, job_id: str, attempt: int) -> None:
        this = asyncio.current_task()
        self.active.add(this)
        try:
            await self._run(job_id, attempt)
        finally:
            self.active.discard(this)

    async def _run(self, job_id: str, attempt: int) -> None:
        store = self.store
        if not await asyncio.to_thread(store.claim, job_id, attempt, self.name):
            return  # a duplicate message of an attempt that another worker runs
        # From the claim on, the reaper judges this attempt by its heartbeat, as if it were running.
        await asyncio.to_thread(store.put_heartbeat, job_id,
                                {"attempt": attempt, "worker": self.name, "time": time.time(), "stage_progress": None})
        record = await asyncio.to_thread(self._owns, job_id, attempt)
        if record is None or record["state"] not in ACTIVE_STATES:
            return
        if await asyncio.to_thread(store.cancel_time, job_id) is not None:
            await asyncio.to_thread(finish_cancelled, store, record)
            return
        image = await asyncio.to_thread(store.image, job_id)
        if image is None:
            await asyncio.to_thread(self._save, record, state="failed", finished=time.time(),
                                    error=error_body("job_lost", "the job's image is no longer stored")["error"])
            return
        await asyncio.to_thread(self._save, record, state="running", started=time.time(), worker=self.name)
        steps = [Step(**s) for s in record["steps"]]
        outcome = outcome_of(record, image if record["has_output"] else None)
        current = {"index": record["next_step"]}

        async def on_step_start(name: str, index: int, total: int) -> None:
            current["index"] = index
            await asyncio.to_thread(self._save, record, stage=name)

        async def on_step_done(index: int, done: ChainOutcome) -> None:
            # The checkpoint a retry resumes from: the image so far, then the record that points past this step.
            if done.image is not None:
                await asyncio.to_thread(store.put_image, job_id, done.image)
            await asyncio.to_thread(
                self._save, record, next_step=index + 1, has_output=done.image is not None,
                timings=[t.__dict__ for t in done.timings], skipped=[list(s) for s in done.skipped],
                forwarded_headers=done.forwarded_headers)

        prefix = f"{job_id}.{attempt}"
        chain = asyncio.create_task(run_chain(self.client, image, steps, on_step_start, outcome,
                                              start=record["next_step"], on_step_done=on_step_done,
                                              request_id_prefix=prefix))
        self.running[job_id] = chain
        watcher = asyncio.create_task(self._watch(job_id, attempt, chain, current, prefix))
        try:
            await chain
            result = outcome.image
            if result is None:  # every stage skipped: the result is the upload as PNG
                result = await asyncio.to_thread(lambda: encode_png(decode_image(image, 1 << 40)))
            try:
                location = await asyncio.to_thread(store.put_result, job_id, result)
            except ValueError as exc:
                await asyncio.to_thread(self._save, record, state="failed", finished=time.time(),
                                        error=error_body("result_too_large", str(exc))["error"])
            else:
                await asyncio.to_thread(self._save, record, state="done", stage=None, finished=time.time(),
                                        result_location=location)
            await asyncio.to_thread(store.drop_images, job_id)
        except asyncio.CancelledError:
            if self.stopping:
                await asyncio.to_thread(requeue, store, record, lost=False)
            elif await asyncio.to_thread(store.cancel_time, job_id) is not None:
                await asyncio.to_thread(finish_cancelled, store, record)
            else:
                raise
        except Stopping:
            pass  # the reaper gave this attempt up while it ran; the newer attempt owns the job
        except StageError as exc:
            await asyncio.to_thread(self._save, record, state="failed", finished=time.time(),
                                    error=exc.body()["error"])
        except Exception:  # a bug must still leave the job in a final state; its details go to the log
            log.exception("job %s failed", job_id)
            await asyncio.to_thread(self._save, record, state="failed", finished=time.time(),
                                    error=error_body("internal_error", "internal error; the details are in the "
                                                     "worker's log")["error"])
        finally:
            watcher.cancel()
            self.running.pop(job_id, None)

    async def _watch(self, job_id: str, attempt: int, chain: asyncio.Task, current: dict, prefix: str) -> None:
        """Heartbeat, stage progress and cancel, until the chain ends."""
        store, settings = self.store, self.settings
        last_beat, last_poll, beat = 0.0, 0.0, {"attempt": attempt, "worker": self.name, "stage_progress": None}
        while not chain.done():
            now = time.monotonic()
            if await asyncio.to_thread(store.cancel_time, job_id) is not None:
                chain.cancel()  # closes the stage's connection: the stage stops working
                return
            if now - last_poll >= settings.progress_poll:
                last_poll = now
                progress = await self.client.progress(f"{prefix}.{current['index']}")
                if progress != beat["stage_progress"] or beat.get("stage_index") != current["index"]:
                    beat.update(stage_progress=progress, stage_index=current["index"])
                    last_beat = 0.0
            if now - last_beat >= settings.heartbeat_interval:
                last_beat = now
                beat["time"] = time.time()
                await asyncio.to_thread(store.put_heartbeat, job_id, dict(beat))
            await asyncio.sleep(0.2)

    async def stop_all(self) -> None:
        self.stopping = True
        for chain in list(self.running.values()):
            chain.cancel()
        await asyncio.gather(*self.active, return_exceptions=True)


def finish_cancelled(store: JobStore, record: dict) -> None:
    cancelled_at = store.cancel_time(record["id"])
    record.update(state="cancelled", stage=None, finished=cancelled_at or time.time())
    store.put_record(record)
    store.drop_images(record["id"])


def requeue(store: JobStore, record: dict, *, lost: bool) -> None:
    """Hand the job to the next worker with a new attempt token; it resumes at ``next_step``."""
    fresh = store.record(record["id"]) or record
    if fresh["attempt"] != record["attempt"] or fresh["state"] in FINAL_STATES:
        return
    fresh.update(state="queued", attempt=fresh["attempt"] + 1, queued_at=time.time(),
                 lost=fresh["lost"] + (1 if lost else 0))
    store.put_record(fresh)
    store.enqueue(fresh["id"], fresh["attempt"])


def reap(store: JobStore, settings: JobSettings) -> dict[str, int]:
    """One pass over every job record; safe to run in several workers at once (attempt tokens and claims)."""
    now = time.time()
    counts = {"requeued": 0, "failed": 0, "cancelled": 0, "expired": 0}
    pending = None
    for record in store.records():
        job_id = record["id"]
        cancelled_at = store.cancel_time(job_id)
        if record["state"] in FINAL_STATES or (cancelled_at is not None and record["state"] == "queued"):
            finished = record["finished"] or cancelled_at
            if record["state"] not in FINAL_STATES:
                finish_cancelled(store, record)
                counts["cancelled"] += 1
            elif finished is not None and now - finished > settings.result_ttl:
                store.delete_job(job_id)
                counts["expired"] += 1
            continue
        claimed = record["state"] == "running" or store.is_claimed(job_id, record["attempt"])
        if claimed:
            beat = store.heartbeat(job_id)
            last = beat["time"] if beat and beat.get("attempt") == record["attempt"] else record["started"] or 0
            if now - last <= settings.stale_after:
                continue
            if cancelled_at is not None:
                finish_cancelled(store, record)
                counts["cancelled"] += 1
            elif record["lost"] >= settings.max_lost:
                record.update(state="failed", finished=now, error=error_body(
                    "worker_lost", f"the worker running stage '{record['stage']}' stopped without finishing it "
                    f"{record['lost'] + 1} times; giving up", stage=record["stage"])["error"])
                store.put_record(record)
                store.drop_images(job_id)
                counts["failed"] += 1
            else:
                log.warning("job %s: worker lost during stage %s; queued again", job_id, record["stage"])
                requeue(store, record, lost=True)
                counts["requeued"] += 1
        elif now - record["queued_at"] > settings.result_ttl:
            # Queued, unclaimed, for longer than a result lives: an API process died between writing the record
            # and enqueueing it (its client never got the id), or the queue was flushed. Nobody can want it.
            if pending is None:
                pending = set(store.pending())
            if (job_id, record["attempt"]) not in pending:
                store.delete_job(job_id)
                counts["expired"] += 1
    return counts


def reaper_loop(store: JobStore, settings: JobSettings, stop: threading.Event) -> None:
    while not stop.wait(settings.reap_interval):
        try:
            reap(store, settings)
        except Exception:  # a store hiccup must not end the reaper
            log.exception("reaper pass failed")


def main() -> None:
    if sys.argv[1:] == ["--ping"]:  # readiness probe: the job store answers
        JobStore(load_settings(JobSettings)).ping()
        return
    stage_settings = Settings.from_env()  # validated before anything runs: a bad variable stops the worker
    settings = load_settings(JobSettings)
    logging.basicConfig(level=stage_settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    store = JobStore(settings)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="chains", daemon=True).start()
    client = StageClient(stage_settings)
    runner = Runner(store, settings, client, loop)
    store.executor = runner.execute
    stop = threading.Event()
    threading.Thread(target=reaper_loop, args=(store, settings, stop), name="reaper", daemon=True).start()
    # SQLite is polled: cap the idle wait so a new job starts within a second.
    consumer = store.huey.create_consumer(workers=settings.workers, worker_type="thread", periodic=False,
                                          max_delay=1.0, check_worker_health=True, shutdown_timeout=0.5)
    log.info("worker %s: %d chain(s) at a time, %s backend", runner.name, settings.workers, settings.backend)
    try:
        consumer.run()  # returns on SIGTERM / SIGINT
    finally:
        stop.set()
        asyncio.run_coroutine_threadsafe(runner.stop_all(), loop).result(timeout=15)
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=5)


if __name__ == "__main__":
    main()
