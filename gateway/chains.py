"""Chains of stages: the fixed simple-mode chain, per-request advanced chains, and the runner.

Pipeline step names are what users see; each maps to one service plus parameters the step pins
(post-denoise and sharpen are the two halves of the postprocess service).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool

from shared.contract import BadRequest, InvalidParams, StageError, parse_json_field, validate_against_schema
from shared.imaging import PNG_MEDIA_TYPE, decode_any, encode_png, media_type_of, transport_size

from .client import StageClient, run_check

# step name -> (service, params pinned by the step)
STEPS: dict[str, tuple[str, dict[str, Any]]] = {
    "repair": ("repair", {}),
    "denoise": ("denoise", {}),
    "deblur": ("deblur", {}),
    "colorize": ("colorize", {}),
    "upscale": ("upscale", {}),
    "post-denoise": ("postprocess", {"sharpen_amount": 0.0}),
    "sharpen": ("postprocess", {"blur_sigma": 0.0}),
    "postprocess": ("postprocess", {}),
    "tone": ("tone", {}),
}
# damage is repaired first: denoising would soften scratches and dust into the texture around them; tone
# after denoise (bench/tone.py: levels measured on a denoised scan land closer to the original) and before
# colorize (the colorizer sees the full tonal range of a faded black-and-white print)
SIMPLE_CHAIN = ("repair", "denoise", "deblur", "tone", "colorize", "upscale", "post-denoise", "sharpen")
COLORIZE_CHOICES = ("auto", "on", "off")
REPAIR_CHOICES = ("auto", "on", "off")
TONE_CHOICES = ("auto", "off")
MAX_ADVANCED_STEPS = 16
# Response headers of a stage that the gateway passes on (the stage's own report of what it decided).
FORWARDED_HEADER_PREFIXES = ("x-colorize", "x-noise", "x-upscale", "x-deblur", "x-model", "x-tone", "x-repair")


@dataclass
class Step:
    name: str
    service: str
    params: dict[str, Any]
    skip_if_unavailable: bool = False


@dataclass
class StepTiming:
    name: str
    gateway_ms: float
    stage_ms: float | None


@dataclass
class ChainOutcome:
    image: bytes | None                       # None when every step was skipped
    timings: list[StepTiming] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (step, reason)
    forwarded_headers: dict[str, str] = field(default_factory=dict)

    def server_timing(self) -> str:
        return ", ".join(f"{t.name};dur={t.gateway_ms:.1f}" for t in self.timings)


def parse_upscale(value: str) -> dict[str, Any] | None:
    """Simple-mode upscale choice -> upscale params, None for no upscale."""
    text = (value or "none").strip().lower()
    if text == "none":
        return None
    if text == "enhance":
        return {"enhance": True}
    if text in ("x2", "x4"):
        return {"scale": float(text[1:])}
    try:
        factor = float(text.removeprefix("x"))
    except ValueError:
        raise InvalidParams("'upscale' must be none, x2, x4, enhance or a factor such as 1.5",
                            field="upscale") from None
    if not 1 < factor <= 8:
        raise InvalidParams("upscale factor is out of range (1, 8]", field="upscale")
    return {"scale": factor}


def simple_chain(colorize: str, upscale: str, repair: str = "auto", tone: str = "auto") -> list[Step]:
    if colorize not in COLORIZE_CHOICES:
        raise InvalidParams(f"'colorize' must be one of {list(COLORIZE_CHOICES)}", field="colorize")
    if repair not in REPAIR_CHOICES:
        raise InvalidParams(f"'repair' must be one of {list(REPAIR_CHOICES)}", field="repair")
    if tone not in TONE_CHOICES:
        raise InvalidParams(f"'tone' must be one of {list(TONE_CHOICES)}", field="tone")
    upscale_params = parse_upscale(upscale)
    steps = []
    for name in SIMPLE_CHAIN:
        service, pinned = STEPS[name]
        params = dict(pinned)
        if name == "repair":
            if repair == "off":
                continue
            params["mode"] = "auto" if repair == "auto" else "force"
        if name == "colorize":
            if colorize == "off":
                continue
            params["mode"] = "auto" if colorize == "auto" else "force"
        if name == "tone":
            if tone == "off":
                continue
            params["mode"] = "auto"
        if name == "upscale":
            if upscale_params is None:
                continue
            params.update(upscale_params)
        steps.append(Step(name, service, params, skip_if_unavailable=True))
    return steps


def parse_advanced_chain(raw: str | None) -> list[tuple[str, dict]]:
    """The ``stages`` field: a JSON list of {"stage": name, "params": {...}}."""
    if raw is None or not raw.strip():
        raise InvalidParams("'stages' is required: a JSON list of {\"stage\": name, \"params\": {...}}",
                            field="stages")
    value = parse_json_field(raw, "stages", list)
    if len(value) > MAX_ADVANCED_STEPS:
        raise InvalidParams(f"at most {MAX_ADVANCED_STEPS} stages per request", field="stages")
    chain = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            item = {"stage": item}
        if not isinstance(item, dict) or not isinstance(item.get("stage"), str):
            raise InvalidParams(f"stages[{index}] must be an object with a 'stage' name", field=f"stages[{index}]")
        extra_keys = set(item) - {"stage", "params"}
        if extra_keys:
            raise InvalidParams(f"stages[{index}] has unknown key(s) {sorted(extra_keys)}", field=f"stages[{index}]")
        name, params = item["stage"], item.get("params") or {}
        if name not in STEPS:
            raise InvalidParams(f"unknown stage '{name}'; known: {list(STEPS)}", field=f"stages[{index}].stage")
        if not isinstance(params, dict):
            raise InvalidParams(f"stages[{index}].params must be an object", field=f"stages[{index}].params")
        chain.append((name, params))
    return chain


async def build_advanced_steps(client: StageClient, chain: list[tuple[str, dict]]) -> list[Step]:
    """Validate every step's params against its service's served schema before anything runs."""
    steps = []
    for index, (name, params) in enumerate(chain):
        service, pinned = STEPS[name]
        try:
            schema = (await client.info(service))["params"]
        except StageError as exc:
            exc.stage = name
            raise
        clashes = sorted(set(params) & set(pinned))
        if clashes:
            raise InvalidParams(f"stages[{index}] ({name}) does not take '{clashes[0]}'",
                                field=f"stages[{index}].params.{clashes[0]}")
        try:
            validate_against_schema(schema, {**params, **pinned})
        except InvalidParams as exc:
            raise InvalidParams(f"stages[{index}] ({name}): {exc.message}",
                                field=f"stages[{index}].params.{exc.field}", stage=name) from None
        steps.append(Step(name, service, {**params, **pinned}))
    return steps


def skip_reason(exc: StageError) -> str:
    """What X-Skipped-Reasons says: the model and how to fetch it, not the stage's internal reason."""
    model, fetch = exc.details.get("model"), exc.details.get("fetch_command")
    if model and fetch:
        return f"model '{model}' is not available; fetch it with: {fetch}"
    return "the stage's model is not available"


def expected_output_size(step: Step, size: tuple[int, int]) -> tuple[int, int] | None:
    """The size a step's answer must have, where the gateway can know it (None: any size)."""
    if step.service != "upscale" or step.params.get("enhance"):
        return size
    scale = step.params.get("scale")
    if isinstance(scale, (int, float)):
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    return None


ProgressHook = Callable[[str, int, int], Awaitable[None]]
StepDoneHook = Callable[[int, ChainOutcome], Awaitable[None]]


@dataclass(frozen=True)
class Fusion:
    """Two consecutive steps that one call of their common service runs as well as two calls would: the
    second hop (the image to the gateway and back, its conversions) is saved. ``takes`` names the params
    each step contributes to that call; ``parts`` names each step's share in the stage's ``parts_header``
    report of what the call cost."""
    service: str
    takes: tuple[frozenset[str], frozenset[str]]
    parts_header: str
    parts: tuple[str, str]

    def merge(self, first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
        """The one call's params: each step's own (a param a step leaves unset keeps the service's default)."""
        return {**{k: v for k, v in first.items() if k in self.takes[0]},
                **{k: v for k, v in second.items() if k in self.takes[1]}}

    def describe(self) -> dict[str, Any]:
        return {"service": self.service, "takes": [sorted(keys) for keys in self.takes]}


# postprocess blurs, then sharpens: post-denoise's blur with sharpen's unsharp mask
FUSIONS: dict[tuple[str, str], Fusion] = {
    ("post-denoise", "sharpen"): Fusion(
        "postprocess", (frozenset({"blur_sigma"}), frozenset({"sharpen_amount", "sharpen_radius", "sharpen_threshold"})),
        "x-postprocess-ms", ("blur", "sharpen")),
}


def fused_run(steps: list[Step], index: int, fuse: bool = True) -> list[Step]:
    """The steps from ``index`` that one stage call runs: two when they fuse, else one."""
    if fuse and index + 1 < len(steps):
        fusion = FUSIONS.get((steps[index].name, steps[index + 1].name))
        if fusion is not None and steps[index].service == steps[index + 1].service == fusion.service:
            return steps[index:index + 2]
    return steps[index:index + 1]


def call_of(run: list[Step]) -> Step:
    """The one stage call that runs ``run`` (one step, or two fused ones)."""
    if len(run) == 1:
        return run[0]
    first, second = run
    return Step(f"{first.name}+{second.name}", first.service, FUSIONS[(first.name, second.name)].merge(
        first.params, second.params), skip_if_unavailable=first.skip_if_unavailable and second.skip_if_unavailable)


def split_timing(run: list[Step], gateway_ms: float, stage_ms: float | None,
                 headers: dict[str, str]) -> list[StepTiming]:
    """Each step's timing; a fused call's times are shared out as the stage's report of its parts says
    (evenly when it says nothing usable)."""
    if len(run) == 1:
        return [StepTiming(run[0].name, gateway_ms, stage_ms)]
    fusion = FUSIONS[(run[0].name, run[1].name)]
    try:
        report = json.loads(headers.get(fusion.parts_header) or "{}")
        spent = [max(0.0, float(report[part])) for part in fusion.parts]
    except (ValueError, TypeError, KeyError):
        spent = [0.0, 0.0]
    total = sum(spent)
    shares = [s / total for s in spent] if total > 0 else [0.5, 0.5]
    return [StepTiming(step.name, gateway_ms * share, None if stage_ms is None else stage_ms * share)
            for step, share in zip(run, shares)]


async def run_chain(client: StageClient, image: bytes, steps: list[Step],
                    on_step_start: ProgressHook | None = None, outcome: ChainOutcome | None = None, *,
                    start: int = 0, on_step_done: StepDoneHook | None = None,
                    request_id_prefix: str | None = None) -> ChainOutcome:
    """Run ``steps[start:]`` in order on ``image``.

    ``outcome`` (filled as the chain goes) lets a caller watch progress live; ``on_step_done`` lets a durable
    job save a checkpoint after each stage call, and ``start`` resumes from one. Each stage call carries the
    request id ``<request_id_prefix>.<step index>`` so its progress can be asked for. Steps that fuse
    (``FUSIONS``, unless settings say not to) go to their service in one call, reported as two steps.
    """
    outcome = outcome if outcome is not None else ChainOutcome(image=None)
    current, current_type = image, media_type_of(image)  # a resumed job may start from a raster checkpoint
    size = await run_check(transport_size, image, size=len(image))
    max_pixels = client.settings.largest_result_pixels
    index = start
    while index < len(steps):
        run = fused_run(steps, index, client.settings.fuse_steps)
        step, last = call_of(run), index + len(run) - 1
        if on_step_start is not None:
            await on_step_start(run[0].name, index, len(steps))
        started = time.perf_counter()
        request_id = f"{request_id_prefix}.{index}" if request_id_prefix else None
        try:
            # Between stages the raster transport; the last stage answers the PNG the user gets.
            result = await client.process(step.service, current, step.params, request_id=request_id,
                                          media_type=current_type, final=last == len(steps) - 1,
                                          expected_size=expected_output_size(step, size), max_pixels=max_pixels)
        except StageError as exc:
            if exc.status == 503 and exc.code == "model_unavailable" and step.skip_if_unavailable:
                outcome.skipped.extend((s.name, skip_reason(exc)) for s in run)
                if on_step_done is not None:
                    await on_step_done(last, outcome)
                index = last + 1
                continue
            if current is image and exc.status == 400 and exc.code == "corrupt_image":
                # the stage could not decode the user's own upload: that is the upload's fault, answered as
                # the gateway's check of it would be (no stage named)
                raise BadRequest("the image data is corrupt or truncated (found while decoding it for "
                                 f"'{step.name}')", code="corrupt_image") from None
            exc.stage = step.name
            raise
        outcome.timings.extend(split_timing(run, (time.perf_counter() - started) * 1000, result.stage_ms,
                                            result.headers))
        for key, value in result.headers.items():
            if key.lower().startswith(FORWARDED_HEADER_PREFIXES):
                outcome.forwarded_headers[key] = value
        current, current_type, size = result.image, result.media_type, result.size
        outcome.image = current
        if on_step_done is not None:
            await on_step_done(last, outcome)
        index = last + 1
    if outcome.image is not None and current_type != PNG_MEDIA_TYPE:  # the last step(s) were skipped
        outcome.image = await run_in_threadpool(lambda: encode_png(decode_any(current, max_pixels=1 << 40)))
    return outcome
