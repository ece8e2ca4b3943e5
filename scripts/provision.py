"""Fetch or provision every model stage's weights (`make provision`).

Each stage's own fetch command does the work; a model that cannot be had is reported, not fatal, because
the service then answers 503 naming it. Set PROVISION_OFFLINE=1 to skip download attempts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL_STAGES = ("upscale", "colorize", "deblur")


def main() -> int:
    offline = ["--offline"] if os.environ.get("PROVISION_OFFLINE") == "1" else []
    for stage in MODEL_STAGES:
        if not (ROOT / "services" / stage / "fetch.py").exists():
            print(f"[provision] {stage}: no fetch command yet")
            continue
        started = time.monotonic()
        print(f"[provision] {stage}: python -m services.{stage}.fetch {' '.join(offline)}", flush=True)
        result = subprocess.run([sys.executable, "-m", f"services.{stage}.fetch", *offline], cwd=ROOT)
        print(f"[provision] {stage}: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
