"""A stage's recent processing speed, for time estimates: recorded by ``/process``, reported by ``/info``.

Every successful request adds (seconds, input megapixels) to a small ring buffer, overall and per parameter
set (the JSON of the params as sent, so a caller that knows what it will send can look up the matching
entry; upscale x4 and "enhance" cost very different amounts per megapixel). The report keeps the contract's
``seconds_per_mp`` (total seconds / total megapixels of the recent requests, null before the first) and adds
a fit ``seconds = seconds_per_request + seconds_per_mp_fit * megapixels``, because small photos are
dominated by a fixed cost per request (decode, encode, model warm-up) that a plain ratio would spread over
their few pixels.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from typing import Any

RECENT_REQUESTS = 32      # ring buffer length, overall and per parameter set
PARAM_SETS = 16           # distinct parameter sets remembered (least recently used dropped first)


def params_key(params: dict[str, Any]) -> str:
    """The lookup key of a parameter set: its JSON with sorted keys (what the UI computes too)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def summarize(samples) -> dict[str, Any]:
    """{"seconds_per_mp", "samples", "seconds_per_request", "seconds_per_mp_fit"} of (seconds, mp) pairs."""
    n = len(samples)
    if n == 0:
        return {"seconds_per_mp": None, "samples": 0, "seconds_per_request": None, "seconds_per_mp_fit": None}
    total_s = sum(s for s, _ in samples)
    total_mp = sum(mp for _, mp in samples)
    ratio = total_s / total_mp if total_mp > 0 else None
    fixed, slope = 0.0, ratio or 0.0
    mean_mp, mean_s = total_mp / n, total_s / n
    spread = sum((mp - mean_mp) ** 2 for _, mp in samples)
    # a line needs sizes that really differ; otherwise all of the time counts as per-megapixel cost
    if n >= 2 and spread > (0.05 * mean_mp) ** 2 * n:
        slope_fit = sum((mp - mean_mp) * (s - mean_s) for s, mp in samples) / spread
        fixed_fit = mean_s - slope_fit * mean_mp
        if slope_fit >= 0 and fixed_fit >= 0:
            fixed, slope = fixed_fit, slope_fit
        elif slope_fit < 0:       # noise bigger than the size effect: a constant time per request
            fixed, slope = mean_s, 0.0
        else:                     # negative intercept: through the origin (least squares)
            fixed, slope = 0.0, sum(s * mp for s, mp in samples) / sum(mp * mp for _, mp in samples)
    elif total_mp <= 0:
        fixed, slope = mean_s, 0.0
    return {"seconds_per_mp": ratio, "samples": n, "seconds_per_request": fixed, "seconds_per_mp_fit": slope}


class Throughput:
    """Thread-safe recent (seconds, megapixels) samples of one stage."""

    def __init__(self, size: int = RECENT_REQUESTS, param_sets: int = PARAM_SETS):
        self.size, self.param_sets = size, param_sets
        self.recent: deque[tuple[float, float]] = deque(maxlen=size)
        self.by_params: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()
        self.lock = threading.Lock()

    def record(self, seconds: float, megapixels: float, params: dict[str, Any] | None = None) -> None:
        if not (seconds >= 0 and megapixels >= 0):
            return
        sample = (float(seconds), float(megapixels))
        with self.lock:
            self.recent.append(sample)
            if params is not None:
                key = params_key(params)
                entry = self.by_params.pop(key, None) or deque(maxlen=self.size)
                entry.append(sample)
                self.by_params[key] = entry
                while len(self.by_params) > self.param_sets:
                    self.by_params.popitem(last=False)

    def report(self) -> dict[str, Any]:
        with self.lock:
            recent = list(self.recent)
            by_params = {key: list(samples) for key, samples in self.by_params.items()}
        return {**summarize(recent),
                "by_params": [{"params": json.loads(key), **summarize(samples)} for key, samples in by_params.items()]}
