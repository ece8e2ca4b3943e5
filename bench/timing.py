"""Timing helper shared by the benchmarks."""
from __future__ import annotations

import time
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
