"""A stage's recent processing speed, for time estimates: recorded by ``/process``, reported by ``/info``.

Every successful request adds (seconds, input megapixels) to a small ring buffer, overall and per parameter
set and kind of input (the JSON of the params as sent, so a caller that knows what it will send can look up
the matching entry: upscale x4 and "enhance" cost very different amounts per megapixel; and "gray" or
"color", because a classical stage works on one plane of a gray picture but three of a colour one). The report keeps the contract's
``seconds_per_mp`` (total seconds / total megapixels of the recent requests, null before the first) and adds
a fit ``seconds = seconds_per_request + seconds_per_mp_fit * megapixels``, because small photos are
dominated by a fixed cost per request (decode, encode, model warm-up) that a plain ratio would spread over
their few pixels. A stage whose cost depends on what it decides for a photo (deblur: milliseconds for a sharp
one, the network for a motion-blurred one) also records each request under its decision (``by_decision``),
which a caller can ask for beforehand (``POST /decide``).
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


HALF_LIFE = 4             # requests: a sample this many requests old counts half as much as the newest


def summarize(samples) -> dict[str, Any]:
    """{"seconds_per_mp", "samples", "seconds_per_request", "seconds_per_mp_fit"} of (seconds, mp) pairs, oldest
    first. Newer samples weigh more (half as much every ``HALF_LIFE`` requests back): the machine's load
    changes, and an estimate should follow what the stage does now, not what it did many requests ago."""
    n = len(samples)
    if n == 0:
        return {"seconds_per_mp": None, "samples": 0, "seconds_per_request": None, "seconds_per_mp_fit": None}
    weights = [0.5 ** ((n - 1 - i) / HALF_LIFE) for i in range(n)]
    weight = sum(weights)
    total_s = sum(w * s for w, (s, _) in zip(weights, samples))
    total_mp = sum(w * mp for w, (_, mp) in zip(weights, samples))
    ratio = total_s / total_mp if total_mp > 0 else None
    if total_mp <= 0:
        return {"seconds_per_mp": None, "samples": n, "seconds_per_request": total_s / weight,
                "seconds_per_mp_fit": 0.0}
    sizes = [mp for _, mp in samples if mp > 0]
    fixed = 0.0
    # The fixed cost is only told apart from the per-megapixel cost when the sizes differ a lot; then it is
    # the weighted least-squares intercept, kept between 0 and the fastest request (content and load make
    # single requests noisy, and a wild intercept would price a small photo like a big one).
    if len(sizes) >= 2 and max(sizes) >= 3 * min(sizes):
        mean_mp, mean_s = total_mp / weight, total_s / weight
        spread = sum(w * (mp - mean_mp) ** 2 for w, (_, mp) in zip(weights, samples))
        slope_fit = sum(w * (mp - mean_mp) * (s - mean_s) for w, (s, mp) in zip(weights, samples)) / spread
        fixed = min(max(0.0, mean_s - slope_fit * mean_mp), min(s for s, _ in samples))
    slope = max(0.0, (total_s - weight * fixed) / total_mp)
    return {"seconds_per_mp": ratio, "samples": n, "seconds_per_request": fixed, "seconds_per_mp_fit": slope}


class Throughput:
    """Thread-safe recent (seconds, megapixels) samples of one stage."""

    def __init__(self, size: int = RECENT_REQUESTS, param_sets: int = PARAM_SETS, skip_first: int = 0):
        self.size, self.param_sets = size, param_sets
        # A process's first requests pay one-off costs (lazy imports, model loading, first-call setup) that
        # would inflate every estimate made from them.
        self.to_skip = skip_first
        self.recent: deque[tuple[float, float, str | None]] = deque(maxlen=size)
        self.by_params: OrderedDict[tuple[str, str | None], deque[tuple[float, float]]] = OrderedDict()
        self.by_decision: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()
        self.lock = threading.Lock()

    def record(self, seconds: float, megapixels: float, params: dict[str, Any] | None = None,
               kind: str | None = None, decision: str | None = None) -> None:
        """One finished request; ``kind``: "gray" or "color" input (None: not known); ``decision``: what the
        stage decided for it, where its cost depends on that."""
        if not (seconds >= 0 and megapixels >= 0):
            return
        sample = (float(seconds), float(megapixels))
        with self.lock:
            if self.to_skip > 0:
                self.to_skip -= 1
                return
            self.recent.append((*sample, kind))
            if params is not None:
                self._add(self.by_params, (params_key(params), kind), sample)
            if decision is not None:
                self._add(self.by_decision, decision, sample)

    def _add(self, table: OrderedDict, key: Any, sample: tuple[float, float]) -> None:
        """``sample`` into ``table[key]``'s ring; the least recently used keys go past ``param_sets``."""
        entry = table.pop(key, None) or deque(maxlen=self.size)
        entry.append(sample)
        table[key] = entry
        while len(table) > self.param_sets:
            table.popitem(last=False)

    def report(self) -> dict[str, Any]:
        with self.lock:
            recent = list(self.recent)
            by_params = {key: list(samples) for key, samples in self.by_params.items()}
            by_decision = {key: list(samples) for key, samples in self.by_decision.items()}
        kinds = sorted({kind for _, _, kind in recent if kind})
        return {**summarize([(s, mp) for s, mp, _ in recent]),
                "by_input": {kind: summarize([(s, mp) for s, mp, k in recent if k == kind]) for kind in kinds},
                "by_params": [{"params": json.loads(key), "input": kind, **summarize(samples)}
                              for (key, kind), samples in by_params.items()],
                "by_decision": {decision: summarize(samples) for decision, samples in by_decision.items()}}
