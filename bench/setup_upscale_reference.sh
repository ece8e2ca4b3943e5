#!/usr/bin/env bash
# Builds .venv-ref: the official Real-ESRGAN package (RealESRGANer) for the upscale benchmark only.
# It is a separate venv (torch 2.14.1 + torchvision 0.29.1 from PyPI, about 5.5 GB) because torchvision
# cannot live beside the main venv's torch 2.13 CPU build. basicsr and realesrgan are installed without
# their training-only dependencies. Nothing here is imported by the services.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REF="${REF_VENV:-$ROOT/.venv-ref}"
PY="${PYTHON:-python3.11}"
"$PY" -m venv "$REF"
"$REF/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" numpy opencv-python-headless pillow \
    scipy addict future lmdb pyyaml requests yapf tqdm
"$REF/bin/pip" install -q --no-deps "basicsr==1.4.2" "realesrgan==0.3.0" "facexlib==0.3.0" "gfpgan==1.3.8"
"$REF/bin/python" - <<'PY'
import sys, torchvision.transforms.functional as F
sys.modules["torchvision.transforms.functional_tensor"] = F
from realesrgan import RealESRGANer  # noqa: F401
from basicsr.archs.rrdbnet_arch import RRDBNet  # noqa: F401
print("reference venv ready")
PY
