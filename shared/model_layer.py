"""The model layer every model stage shares (after spandrel's ``ImageModelDescriptor``).

* ``ModelSpec``: one network as data: its weight files (with hashes), how it is loaded, its scale, size
  requirements, tile geometry, the precisions it was checked in, licence.
* ``LoadedModel``: a loaded network placed on a device at a precision (both chosen once, at load).
  Calling it, ``model(tile, ctx)``, is the one path from pixels to pixels: pad to the size requirements,
  run, crop, clamp. Padding lives here and nowhere else.
* ``ModelRegistry``: one per stage: lazy, thread-safe loading (each model once, a few kept), the one rule
  for the default ("auto") model, and the status ``/health`` and ``/info`` show.

No torch import here: the torch-specific part (placing a module, autocast, abort between layers) is
``shared/torch_model.py``; an ONNX Runtime model subclasses ``LoadedModel`` the same way.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .contract import ModelUnavailable
from .model_store import CORRUPT_REASON, ModelFile, ModelStore

log = logging.getLogger("restore.models")

# "mixed" = bf16 only where a network's own checks allow it, fp32 elsewhere (RRDBNet's trunk, see upscale)
PRECISIONS = ("fp32", "bf16", "mixed", "fp16")
AUTO = "auto"


@dataclass(frozen=True)
class SizeRequirements:
    """What input sizes a network accepts; other sizes are padded up to the next accepted one."""

    minimum: int = 1
    multiple_of: int = 1
    square: bool = False

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        def up(side: int) -> int:
            side = max(side, self.minimum)
            return -(-side // self.multiple_of) * self.multiple_of

        padded_h, padded_w = up(height), up(width)
        if self.square:
            padded_h = padded_w = max(padded_h, padded_w)
        return padded_h, padded_w


@dataclass(frozen=True)
class TileSpec:
    """Tile geometry in input pixels; ``tile=None``: the network always sees the whole image at once."""

    tile: int | None = None
    overlap: int = 0
    context: int = 0

    def as_dict(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap, "context": self.context}


@dataclass(frozen=True)
class ModelSpec:
    """One network of a stage, as data. ``load(spec, paths, device, precision, **options)`` returns the
    ``LoadedModel``; ``paths`` are the local files in the order of ``files``."""

    name: str
    description: str
    license: str
    files: tuple[ModelFile, ...]
    load: Callable[..., "LoadedModel"]
    fetch_command: str
    scale: int = 1
    size: SizeRequirements = SizeRequirements()
    tiling: TileSpec = TileSpec()
    precisions: tuple[str, ...] = ("fp32",)
    cpu_precision: str = "fp32"           # used on CPUs with native bf16; fp32 on the others
    pad_mode: str = "reflect"             # "reflect" (mirror; edge where the image is too small) or "constant"
    pad_value: float = 0.0
    output_range: tuple[float, float] | None = (0.0, 1.0)
    extra: Mapping[str, Any] = field(default_factory=dict)  # stage-specific fields shown in the status

    def __post_init__(self):
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown or self.cpu_precision not in self.precisions:
            raise ValueError(f"{self.name}: precisions {self.precisions} / cpu {self.cpu_precision} not in "
                             f"{PRECISIONS}")


# ------------------------------------------------------------------------------------------ device, precision

@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_device(stage: str) -> str:
    """``<STAGE>_DEVICE`` if set, else CUDA when torch sees one, else the CPU."""
    wanted = os.environ.get(f"{stage.upper()}_DEVICE", AUTO)
    if wanted != AUTO:
        return wanted
    if importlib.util.find_spec("torch") is not None:
        import torch
        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


def select_precision(spec: ModelSpec, device: str, requested: str | None = None, *, stage: str = "") -> str:
    """The one precision rule: an explicit request (argument, else ``<STAGE>_PRECISION``) the spec supports;
    otherwise fp16 on CUDA where supported, the spec's CPU choice on CPUs with native bf16, else fp32."""
    from_env = requested is None
    requested = requested or os.environ.get(f"{stage.upper()}_PRECISION", AUTO)
    if requested != AUTO:
        if requested in spec.precisions:
            return requested
        if not from_env:
            raise ValueError(f"{spec.name} supports precisions {spec.precisions}, not {requested!r}")
        log.warning("%s: %s_PRECISION=%s is not supported, using auto", spec.name, stage.upper(), requested)
    if device.startswith("cuda"):
        return "fp16" if "fp16" in spec.precisions else "fp32"
    return spec.cpu_precision if cpu_has_bf16() else "fp32"


def _apply_thread_limit(stage: str) -> None:
    """``<STAGE>_THREADS`` caps torch's intra-op threads (ONNX Runtime sessions read it themselves)."""
    threads = os.environ.get(f"{stage.upper()}_THREADS")
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))


# ------------------------------------------------------------------------------------------ the one call

def pad_to_requirements(image: np.ndarray, size: SizeRequirements, mode: str = "reflect",
                        value: float = 0.0) -> np.ndarray:
    """Pad bottom/right (H x W or H x W x C) up to the next size ``size`` accepts."""
    height, width = image.shape[:2]
    padded_h, padded_w = size.padded_size(height, width)
    pad_h, pad_w = padded_h - height, padded_w - width
    if pad_h == 0 and pad_w == 0:
        return image
    widths = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2)
    if mode == "constant":
        return np.pad(image, widths, mode="constant", constant_values=value)
    # a mirror needs more pixels than it reflects; tiny images repeat their edge instead
    return np.pad(image, widths, mode="reflect" if pad_h < height and pad_w < width else "edge")


class LoadedModel:
    """A network ready to run: ``model(tile, ctx)`` maps H x W (x C) float32 to sH x sW x C' float32.

    Subclasses implement ``forward`` (padded input -> output at ``spec.scale``, any range); this class does
    the padding, cropping and clamping, so every network of every stage is called the same way.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu", precision: str = "fp32"):
        self.spec = spec
        self.device = device
        self.precision = precision

    def forward(self, image: np.ndarray, ctx=None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, tile: np.ndarray, ctx=None) -> np.ndarray:
        if ctx is not None:
            ctx.check_aborted()
        height, width = tile.shape[:2]
        padded = pad_to_requirements(tile, self.spec.size, self.spec.pad_mode, self.spec.pad_value)
        out = self.forward(np.ascontiguousarray(padded, dtype=np.float32), ctx)
        scale = self.spec.scale
        expected = (padded.shape[0] * scale, padded.shape[1] * scale)
        if out.shape[:2] != expected:
            raise ValueError(f"{self.spec.name} returned {out.shape[:2]} for {padded.shape[:2]}, expected {expected}")
        out = out[:height * scale, :width * scale]
        if self.spec.output_range is not None:
            out = np.clip(out, *self.spec.output_range)
        return np.ascontiguousarray(out, dtype=np.float32)

    def describe(self) -> str:
        return f"{self.device}/{self.precision}"


# ------------------------------------------------------------------------------------------ registry

class ModelRegistry:
    """The models of one stage: status, the default rule, and lazy thread-safe loading.

    ``preference`` orders the default choice (default: the order of ``specs``); env ``<STAGE>_DEFAULT_MODEL``
    puts one model first. Loaded models are kept (at most ``cache_size``, least recently used dropped) and
    shared read-only between requests. A cached file that cannot be loaded makes its model unavailable with
    the clear 503 naming the fetch command, never a 500.
    """

    def __init__(self, stage: str, specs: Sequence[ModelSpec], *, store: ModelStore | None = None,
                 preference: Sequence[str] | None = None, cache_size: int = 3):
        self.stage = stage
        self.specs: "OrderedDict[str, ModelSpec]" = OrderedDict((s.name, s) for s in specs)
        self.preference = tuple(preference or self.specs)
        self.store = store or ModelStore()
        self.cache_size = cache_size
        self.device = select_device(stage)
        self._loaded: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
        self._lock = threading.Lock()

    def available(self, name: str) -> bool:
        return all(self.store.is_available(f) for f in self.specs[name].files)

    def default_name(self) -> str | None:
        """The model "auto" runs: the env's choice if installed, else the first installed by preference."""
        wanted = os.environ.get(f"{self.stage.upper()}_DEFAULT_MODEL")
        order = ((wanted,) if wanted in self.specs else ()) + self.preference
        return next((name for name in order if self.available(name)), None)

    def resolve(self, requested: str | None) -> str:
        """A model name from a request's ``model`` parameter (None or "auto" = the default)."""
        if requested not in (None, AUTO):
            return requested
        name = self.default_name()
        if name is None:
            first = self.specs[self.preference[0]]
            raise ModelUnavailable(first.name, first.fetch_command, stage=self.stage,
                                   reason=f"no {self.stage} model is installed")
        return name

    def ensure_available(self, name: str) -> None:
        """ModelUnavailable (503, naming the fetch command) unless every file of ``name`` is installed."""
        if not self.available(name):
            missing = [f for f in self.specs[name].files if not self.store.is_available(f)]
            reason = "; ".join(sorted({self.store.missing_reason(f) for f in missing}))
            raise ModelUnavailable(name, self.specs[name].fetch_command, stage=self.stage, reason=reason)

    def load(self, name: str, **options) -> LoadedModel:
        spec = self.specs[name]
        self.ensure_available(name)
        paths = tuple(self.store.require(f, stage=self.stage) for f in spec.files)
        key = (name, tuple(sorted(options.items())))
        with self._lock:  # one load per model even when requests arrive together
            model = self._loaded.get(key)
            if model is None:
                _apply_thread_limit(self.stage)
                try:
                    precision = select_precision(spec, self.device, stage=self.stage)
                    model = spec.load(spec, paths, self.device, precision, **options)
                except ModelUnavailable:
                    raise
                except Exception:
                    log.exception("model %s: loading %s failed", name, paths[0])  # details stay in the log
                    raise ModelUnavailable(name, spec.fetch_command, stage=self.stage,
                                           reason=CORRUPT_REASON) from None
                self._loaded[key] = model
                while len(self._loaded) > self.cache_size:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return model

    def pick(self, requested: str | None, **options) -> tuple[str, LoadedModel]:
        name = self.resolve(requested)
        return name, self.load(name, **options)

    def status(self) -> dict[str, dict]:
        default = self.default_name() or self.preference[0]
        out = {}
        for name, spec in self.specs.items():
            out[name] = {"available": self.available(name), "default": name == default,
                         "description": spec.description, "license": spec.license,
                         "fetch_command": spec.fetch_command, "file": spec.files[0].filename,
                         "files": [{"file": f.filename, "sha256": f.sha256} for f in spec.files],
                         "scale": spec.scale, "precisions": list(spec.precisions),
                         "precision": select_precision(spec, self.device, stage=self.stage),
                         "device": self.device, "tiling": spec.tiling.as_dict(), **spec.extra}
        return out
