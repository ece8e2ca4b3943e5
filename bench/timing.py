"""Timing helper shared by the benchmarks."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def best_of(fn: Callable[[], T], runs: int) -> tuple[float, T]:
    """Fastest wall time in seconds over ``runs`` calls (the least disturbed by other load) and the last result."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def machine() -> str:
    """The CPU this runs on, its cores and the load: each benchmark prints it beside its numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (timings are noisy when loaded)"
