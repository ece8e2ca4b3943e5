"""Running MAXIM-3S on photos of any size: precision choice, tile geometry, padding, cross-fades.

The runner is the model layer's ``LoadedModel`` for MAXIM (``runner(tile, ctx)`` pads to 64-multiples, runs,
crops); the stage calls ``runner.deblur(rgb, ctx=...)``, which plans the windows itself. An abort is checked
before every window and between the network's blocks.

Tile geometry: MAXIM needs sides that are multiples of 64 and its memory grows with the pixels of one run,
so a photo that does not fit the budget is split evenly into the fewest windows that do. Windows are
64-multiples placed inside the photo (at the borders they shift inwards instead of being padded), neighbours
overlap by at least two contexts plus a cross-fade zone, and every window's output is used only where it
had ``context`` pixels of neighbourhood (except at the photo's own border). A photo that fits is run whole,
padded (reflect) to the next multiple of 64.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shared.model_layer import LoadedModel
from shared.settings import load_settings

from .settings import DeblurSettings

log = logging.getLogger("restore.deblur")

MULTIPLE = 64
CONTEXT = 32  # input pixels of neighbourhood each window keeps beyond the part of it that is used
FADE = 32  # width of the linear cross-fade between neighbouring windows
# Largest window (pixels of one network run): peak memory grows linearly with it. The default lets a 2 MP
# photo go through in four windows (bench/deblur.py prints the peak RSS); DEBLUR_MAX_WINDOW_PIXELS overrides.
DEFAULT_MAX_WINDOW_PIXELS = 1024 * 640
# From this window size on, the heap is also trimmed between the network's blocks, not only after each
# window: the blocks' freed activations leave holes that otherwise raise a large window's peak RSS well above
# the memory in use (bench/deblur.py prints it). Small windows skip it (their peak is small, and each trim
# costs page faults later).
TRIM_BETWEEN_BLOCKS_PIXELS = 256 * 1024
# fp32 activations take about twice the memory of bf16 / fp16 ones: half the window for the same budget.
FP32_WINDOW_FACTOR = 0.5
PRECISIONS = ("fp32", "bf16", "fp16")


# ------------------------------------------------------------------------------------------ precision


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``), after each window (and, in large
    windows, between the network's blocks): the network's large, short-lived activations otherwise stay on
    a fragmented heap and keep the RSS far above the memory in use. (Sending them to mmap instead,
    M_MMAP_THRESHOLD, gives every allocation fresh zeroed pages: bench/deblur.py measured it slower.)"""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def trimming(check: Callable[[], None] | None) -> Callable[[], None]:
    """``check`` (may be None) that first releases the heap's free pages."""
    def check_and_trim() -> None:
        release_free_memory()
        if check is not None:
            check()
    return check_and_trim


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPUs where bf16 matmuls run natively (elsewhere they are emulated, slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def choose_precision(device: str) -> str:
    """fp16 on CUDA, bf16 on CPUs with native bf16, fp32 elsewhere; DEBLUR_PRECISION overrides."""
    wanted = load_settings(DeblurSettings).deblur_precision
    if wanted != "auto":
        if wanted not in PRECISIONS:
            raise ValueError(f"DEBLUR_PRECISION={wanted!r}; expected one of {PRECISIONS}")
        return wanted
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


# ------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class AxisPlan:
    length: int
    window: int  # multiple of MULTIPLE
    starts: tuple[int, ...]

    @property
    def padded(self) -> int:
        """Length the windows run at when one window covers the whole axis (reflect padding)."""
        return max(self.window, self.length)


def plan_axis(length: int, count: int, max_window: int) -> AxisPlan | None:
    """``count`` equal windows (multiples of 64, at most ``max_window``) covering ``length``, or None."""
    if count == 1:
        window = math.ceil(length / MULTIPLE) * MULTIPLE
        return AxisPlan(length, window, (0,)) if window <= max_window else None
    overlap = 2 * CONTEXT + FADE
    window = math.ceil((length + (count - 1) * overlap) / count / MULTIPLE) * MULTIPLE
    if window > max_window or window > length:
        return None
    starts = tuple(round(i * (length - window) / (count - 1)) for i in range(count))
    return AxisPlan(length, window, starts)


@dataclass(frozen=True)
class TilePlan:
    ys: AxisPlan
    xs: AxisPlan

    @property
    def count(self) -> int:
        return len(self.ys.starts) * len(self.xs.starts)

    @property
    def processed_pixels(self) -> int:
        return self.count * self.ys.window * self.xs.window

    @property
    def ratio(self) -> float:
        """Pixels the network processes / the photo's pixels (1.0 = no waste)."""
        return self.processed_pixels / (self.ys.length * self.xs.length)


def plan_tiles(height: int, width: int, max_window_pixels: int = DEFAULT_MAX_WINDOW_PIXELS) -> TilePlan:
    """The fewest windows whose runs fit ``max_window_pixels``; ties broken by the pixels processed."""
    best: TilePlan | None = None
    limit = max(MULTIPLE, max_window_pixels // MULTIPLE)
    for ny in range(1, height // MULTIPLE + 2):
        for nx in range(1, width // MULTIPLE + 2):
            if best is not None and ny * nx > best.count:
                break
            ys = plan_axis(height, ny, limit)
            xs = plan_axis(width, nx, limit)
            if ys is None or xs is None or ys.window * xs.window > max_window_pixels:
                continue
            plan = TilePlan(ys, xs)
            if best is None or (plan.count, plan.processed_pixels) < (best.count, best.processed_pixels):
                best = plan
    if best is None:  # budget below one 64x64 window: run the smallest windows anyway
        return plan_tiles(height, width, MULTIPLE * MULTIPLE * 4)
    return best


def _fade_weights(plan: AxisPlan, index: int) -> tuple[int, int, np.ndarray]:
    """(first, last) output rows this window contributes to and their weights (partition of unity)."""
    starts, window = plan.starts, plan.window
    lo, hi = starts[index], min(starts[index] + window, plan.length)
    coords = np.arange(lo, hi, dtype=np.float64) + 0.5
    weight = np.ones(hi - lo)
    for left in (index - 1, index):
        if left < 0 or left + 1 >= len(starts):
            continue
        shared_lo, shared_hi = starts[left + 1], starts[left] + window
        middle = (shared_lo + shared_hi) / 2
        ramp = np.clip((coords - (middle - FADE / 2)) / FADE, 0.0, 1.0)
        weight = np.minimum(weight, ramp if left == index - 1 else 1.0 - ramp)
    return lo, hi, weight.astype(np.float32)


# ------------------------------------------------------------------------------------------ runner


class MaximRunner(LoadedModel):
    """MAXIM-3S on one device with one precision; shared read-only between requests."""

    def __init__(self, model, device: str = "cpu", precision: str | None = None,
                 max_window_pixels: int | None = None, spec=None):
        import torch

        if spec is None:
            from .models import MAXIM_SPEC as spec
        super().__init__(spec, device, precision or choose_precision(device))
        # The network keeps activations NHWC; convolution weights in channels_last match them (no reorder).
        model = model.to(memory_format=torch.channels_last)
        # bf16 (CPU) and fp16 (CUDA): the weights themselves in that type, no autocast. Autocast casts every
        # weight on every call and the activations back and forth around each op; bench/deblur.py and
        # bench/gpu_check.py print the gain and the distance from fp32 (layer norms still accumulate in
        # fp32 inside the kernels).
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        if next(model.parameters()).dtype != self.dtype:
            # a copy: the caller's module may serve another runner (tests and benchmarks compare precisions)
            model = copy.deepcopy(model).to(self.dtype)
        self.model = model
        if max_window_pixels is None:
            max_window_pixels = load_settings(DeblurSettings).deblur_max_window_pixels or int(
                DEFAULT_MAX_WINDOW_PIXELS * (FP32_WINDOW_FACTOR if self.precision == "fp32" else 1.0))
        self.max_window_pixels = max_window_pixels

    def network(self, batch: np.ndarray, ctx=None) -> np.ndarray:
        """The raw network on an N x H x W x 3 float32 batch (sides multiples of 64)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        check = ctx.check_aborted if ctx is not None else None
        if self.device == "cpu" and batch.shape[1] * batch.shape[2] >= TRIM_BETWEEN_BLOCKS_PIXELS:
            check = trimming(check)
        with torch.inference_mode():
            out = self.model(x.to(self.dtype), check=check)
        result = out.float().cpu().numpy()
        del out
        release_free_memory()
        return result

    def forward(self, image: np.ndarray, ctx=None) -> np.ndarray:
        """LoadedModel: one padded H x W x 3 window (sides multiples of 64)."""
        return self.network(image[None], ctx)[0]

    def window(self, rgb: np.ndarray, ctx=None) -> np.ndarray:
        """One run on an H x W x 3 [0, 1] window of any size (padded to multiples of 64, cropped)."""
        return self(rgb, ctx)

    def plan(self, height: int, width: int) -> TilePlan:
        return plan_tiles(height, width, self.max_window_pixels)

    def deblur(self, rgb: np.ndarray, progress: Callable[[int, int], None] | None = None, ctx=None) -> np.ndarray:
        """Deblur an H x W x 3 float32 [0, 1] photo of any size, tiled to fit the memory budget; ``ctx``
        (optional) is asked ``check_aborted()`` before and during every window, told ``set_progress`` after."""
        height, width = rgb.shape[:2]
        plan = self.plan(height, width)
        output = None if plan.count == 1 else np.zeros_like(rgb, dtype=np.float32)
        done = 0
        for iy in range(len(plan.ys.starts)):
            y0, y1, wy = _fade_weights(plan.ys, iy)
            for ix in range(len(plan.xs.starts)):
                x0, x1, wx = _fade_weights(plan.xs, ix)
                result = self.window(rgb[y0:y1, x0:x1], ctx)
                if output is None:
                    output = result
                else:
                    output[y0:y1, x0:x1] += result * (wy[:, None, None] * wx[None, :, None])
                done += 1
                if progress:
                    progress(done, plan.count)
                if ctx is not None:
                    ctx.set_progress(done / plan.count)
        assert output is not None
        return output


def load_maxim(path: Path, expected_digest: str | None = None):
    """The network with the cached safetensors weights (strict: every key and shape must match)."""
    from safetensors.torch import load_file

    from shared.torch_weights import load_strict

    from .arch.maxim import MAXIM3S

    state = load_file(str(path))
    if expected_digest is not None:
        digest = state_digest({k: v.numpy() for k, v in state.items()})
        if digest != expected_digest:
            raise ValueError(f"weights digest {digest[:16]}... is not the converted MAXIM-3S ({expected_digest[:16]}...)")
    return load_strict(MAXIM3S(), state)


def state_digest(state: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, shapes and little-endian float32 bytes (independent of the file container)."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        value = np.ascontiguousarray(state[key], dtype="<f4")
        digest.update(f"{key}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()
