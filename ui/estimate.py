"""Time estimates from the stages' own recent throughput (``/info`` -> ``throughput``, via /v1/stages).

Before a run: the steps the gateway will send (the same params, so a stage's per-parameter-set entry
matches), each with the size of the picture it will get (upscaling changes it), priced by the stage's fit
``seconds_per_request + seconds_per_mp_fit * MP`` (or the plain ``seconds_per_mp``). Where a stage's cost
depends on the photo (deblur: a sharp photo skips the network), the gateway's ``/v1/decisions`` says what it
will decide and the stage's record for that decision prices it. While running: the
estimate of what is left, rescaled by how the finished steps compared with their estimates, and following the
running step's ``stage_progress`` when the job status has it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SIMPLE_CHAIN = ("repair", "denoise", "deblur", "tone", "colorize", "upscale", "post-denoise", "sharpen")
SPEED_FACTOR_RANGE = (0.33, 3.0)   # how far the finished steps may rescale what is left


@dataclass
class StepEstimate:
    step: str
    service: str
    params: dict[str, Any]
    megapixels: float
    seconds: float | None        # None: this server has not run the step yet
    skipped: bool = False        # not installed: the gateway skips it at once


@dataclass
class Overhead:
    """What the gateway adds to the stages' own times, learned from a finished job of this server."""

    per_step: float = 0.0    # seconds per step: the HTTP hop (upload, multipart parsing, download)
    per_job: float = 0.0     # seconds outside the steps: queue pickup, calls to skipped steps, the result

    @classmethod
    def from_job(cls, status: dict, stage_times: dict | None) -> "Overhead | None":
        """From a done job's status and its result's X-Stage-Times ({step: {gateway_ms, stage_ms}})."""
        if status.get("state") != "done" or not status.get("finished") or not status.get("created"):
            return None
        hops = sorted((t["gateway_ms"] - t["stage_ms"]) / 1000 for t in (stage_times or {}).values()
                      if t.get("stage_ms") is not None and t.get("gateway_ms") is not None)
        in_steps = sum(d["ms"] for d in status.get("stages_done", [])) / 1000
        return cls(per_step=max(0.0, hops[len(hops) // 2]) if hops else 0.0,
                   per_job=max(0.0, status["finished"] - status["created"] - in_steps))

    def blend(self, newer: "Overhead | None") -> "Overhead":
        """Half the old, half the new: one slow job moves the estimate, but not all the way."""
        if newer is None:
            return self
        return Overhead(0.5 * (self.per_step + newer.per_step), 0.5 * (self.per_job + newer.per_job))


@dataclass
class Plan:
    steps: list[StepEstimate] = field(default_factory=list)
    extra: float = 0.0        # per-job overhead, in seconds

    @property
    def unknown(self) -> list[str]:
        return [s.step for s in self.steps if s.seconds is None and not s.skipped]

    @property
    def seconds(self) -> float:
        """The estimated total of the steps with an estimate, with the job's overhead."""
        return self.extra + sum(s.seconds or 0.0 for s in self.steps if not s.skipped)

    def by_step(self) -> dict[str, StepEstimate]:
        return {s.step: s for s in self.steps}


def parse_upscale(choice: str) -> dict[str, Any] | None:
    """Simple mode's upscale choice as the params the gateway sends (gateway/chains.py parse_upscale)."""
    text = (choice or "none").strip().lower()
    if text == "none":
        return None
    if text == "enhance":
        return {"enhance": True}
    return {"scale": float(text.lstrip("x"))}


def simple_steps(stages: dict, colorize: str, upscale: str) -> list[tuple[str, dict[str, Any]]]:
    """(step, params as sent) of simple mode, as the gateway builds them."""
    out = []
    upscale_params = parse_upscale(upscale)
    for name in SIMPLE_CHAIN:
        params = dict(stages.get("steps", {}).get(name, {}).get("pinned_params", {}))
        if name == "colorize":
            if colorize == "off":
                continue
            params["mode"] = "auto" if colorize == "auto" else "force"
        if name == "upscale":
            if upscale_params is None:
                continue
            params.update(upscale_params)
        out.append((name, params))
    return out


def advanced_steps(stages: dict, chain: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(step, params as sent) of an advanced chain: the chosen params plus the step's pinned ones."""
    return [(e["stage"], {**e.get("params", {}),
                          **stages.get("steps", {}).get(e["stage"], {}).get("pinned_params", {})}) for e in chain]


def output_size(step: str, params: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    if step == "upscale" and not params.get("enhance") and params.get("scale"):
        factor = float(params["scale"])
        return round(size[0] * factor), round(size[1] * factor)
    return size


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _entry(throughput: dict, params: dict[str, Any], kind: str | None) -> dict:
    """The most specific report with samples: these params and this kind of input, then this kind of input,
    then these params, then everything."""
    wanted = _canonical(params)
    same_params = [e for e in throughput.get("by_params") or []
                   if e.get("samples") and _canonical(e.get("params", {})) == wanted]
    candidates = [e for e in same_params if kind and e.get("input") == kind]
    candidates.append((throughput.get("by_input") or {}).get(kind) or {})
    candidates.append(max(same_params, key=lambda e: e["samples"], default={}))
    return next((c for c in candidates if c.get("samples")), throughput)


def step_seconds(throughput: dict | None, params: dict[str, Any], megapixels: float,
                 kind: str | None = None, decision: str | None = None) -> float | None:
    """Seconds for one step on ``megapixels`` of ``kind`` ("gray" / "color") input from a stage's throughput
    report, from its record for ``decision`` when the stage will decide that; None without data."""
    if not throughput:
        return None
    decided = (throughput.get("by_decision") or {}).get(decision) if decision else None
    entry = decided if decided and decided.get("samples") else _entry(throughput, params, kind)
    if not entry.get("samples"):
        return None
    if entry.get("seconds_per_mp_fit") is not None:
        return float(entry.get("seconds_per_request") or 0.0) + float(entry["seconds_per_mp_fit"]) * megapixels
    if entry.get("seconds_per_mp") is not None:
        return float(entry["seconds_per_mp"]) * megapixels
    return None


def ran_without_model(throughput: dict | None, params: dict[str, Any], megapixels: float,
                      kind: str | None) -> float | None:
    wanted = _canonical(params)
    exact = [e for e in (throughput or {}).get("by_params") or [] if e.get("samples") and kind
             and e.get("input") == kind and _canonical(e.get("params", {})) == wanted]
    return step_seconds(exact[0], params, megapixels) if exact else None


def fused_calls(stages: dict, steps: list[tuple[str, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """index -> the params of the one call that runs steps ``index`` and ``index + 1``, where the gateway fuses
    them (/v1/stages ``fusions``: the pair and the params each step contributes)."""
    takes = {tuple(f["steps"]): f["takes"] for f in stages.get("fusions") or []}
    fused: dict[int, dict[str, Any]] = {}
    index = 0
    while index + 1 < len(steps):
        (first, first_params), (second, second_params) = steps[index], steps[index + 1]
        keys = takes.get((first, second))
        if keys is None:
            index += 1
            continue
        fused[index] = {**{k: v for k, v in first_params.items() if k in keys[0]},
                        **{k: v for k, v in second_params.items() if k in keys[1]}}
        index += 2
    return fused


def plan(stages: dict, steps: list[tuple[str, dict[str, Any]]], size: tuple[int, int],
         usable: dict[str, bool] | None = None, kind: str | None = None,
         overhead: Overhead | None = None, decisions: dict[str, str] | None = None) -> Plan:
    """The estimate of each step for a photo of ``size`` (width, height) and ``kind`` ("gray" / "color").
    ``usable``: service -> ready; a step whose service is not ready is skipped (simple mode). ``overhead``:
    what the gateway adds, from an earlier job (none known: the stages' times alone). ``decisions``: step ->
    what its stage will decide for this photo (``/v1/decisions``)."""
    decisions = decisions or {}
    overhead = overhead or Overhead()
    out = Plan(extra=overhead.per_job)
    fused = fused_calls(stages, steps)
    for index, (step, params) in enumerate(steps):
        if index - 1 in fused:      # priced with the step before it: one call runs both
            continue
        service = stages.get("steps", {}).get(step, {}).get("service", step)
        megapixels = size[0] * size[1] / 1e6
        entry = stages.get("services", {}).get(service, {})
        throughput = (entry.get("info") or {}).get("throughput")
        if usable is not None and not usable.get(service, True):
            # not installed, yet it may still answer some photos without its model (colorize leaves a colour
            # photo alone): its record for exactly these params and this kind of photo says so
            seconds = ran_without_model(throughput, params, megapixels, kind)
            if seconds is not None:
                seconds += overhead.per_step
            out.steps.append(StepEstimate(step, service, params, megapixels, seconds or 0.0, skipped=seconds is None))
            if index in fused:
                second, second_params = steps[index + 1]
                out.steps.append(StepEstimate(second, service, second_params, megapixels, 0.0,
                                              skipped=seconds is None))
            continue
        if index in fused:
            # one call of the service (the params as the gateway merges them), its time shared by both steps
            seconds = step_seconds(throughput, fused[index], megapixels, kind)
            share = None if seconds is None else (seconds + overhead.per_step) / 2
            second, second_params = steps[index + 1]
            out.steps += [StepEstimate(step, service, params, megapixels, share),
                          StepEstimate(second, service, second_params, megapixels, share)]
            continue
        seconds = step_seconds(throughput, params, megapixels, kind, decisions.get(step))
        out.steps.append(StepEstimate(step, service, params, megapixels,
                                      None if seconds is None else seconds + overhead.per_step))
        size = output_size(step, params, size)
        if step == "colorize" and (params.get("mode") == "force" or kind == "gray"):
            kind = "color"
    return out


@dataclass
class Eta:
    remaining: float | None    # seconds left; None when a step still to run has no estimate
    fraction: float            # 0..1 of the job done, by time


def eta(job_plan: Plan, status: dict, running_for: float) -> Eta:
    """What is left of a job. ``running_for``: seconds since the job's state became running."""
    estimates = job_plan.by_step()
    done = {d["stage"]: d["ms"] / 1000 for d in status.get("stages_done", [])}
    skipped = {s["stage"] for s in status.get("skipped", [])}
    names = status.get("stages", [])
    if status.get("state") == "done":
        return Eta(0.0, 1.0)
    finished_actual = sum(done.values())
    finished_estimate = sum(estimates[n].seconds or 0.0 for n in done if n in estimates)
    factor = 1.0
    if finished_estimate > 0.5 and finished_actual > 0:   # too little finished work says nothing yet
        factor = min(SPEED_FACTOR_RANGE[1], max(SPEED_FACTOR_RANGE[0], finished_actual / finished_estimate))
    running = status.get("stage") if status.get("state") == "running" else None
    remaining: float | None = 0.0
    spent_in_running = max(0.0, running_for - finished_actual)
    for name in names:
        if name in done or name in skipped:
            continue
        estimate = estimates.get(name)
        seconds = estimate.seconds if estimate else None
        if seconds is None:
            if estimate is None or not estimate.skipped:
                remaining = None
            continue
        seconds *= factor
        if name == running:
            progress = status.get("stage_progress")
            if isinstance(progress, (int, float)) and 0 < progress <= 1:
                # what the stage says it has done, at the pace it has shown so far
                left = spent_in_running * (1 - progress) / progress if spent_in_running > 0 else seconds
                left = 0.5 * left + 0.5 * seconds * (1 - progress)
            else:
                left = max(0.1 * seconds, seconds - spent_in_running)
            if remaining is not None:
                remaining += left
        elif remaining is not None:
            remaining += seconds
    spent = finished_actual + (spent_in_running if running else 0.0)
    if remaining is None:
        fraction = status.get("progress", 0.0)
    else:
        fraction = spent / (spent + remaining) if spent + remaining > 0 else 0.0
    return Eta(remaining, min(1.0, max(0.0, fraction)))


def describe_seconds(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 60:
        return f"about {max(1, round(seconds))} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"about {minutes} min {rest:02d} s" if minutes < 10 else f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"
