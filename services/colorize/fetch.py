"""Fetch colorize weights into the model cache: ``python -m services.colorize.fetch [eccv16] [siggraph17]``.

Downloads the authors' releases (129 MB + 137 MB) and checks the SHA-256 prefix in each file name. Needs
internet access to the authors' bucket; there is no offline source (``--offline`` reports them missing).
"""
from __future__ import annotations

import sys

from shared.model_store import fetch_main

from .models import MODEL_FILES


def main(argv: list[str] | None = None) -> int:
    return fetch_main(MODEL_FILES, argv, stage="colorize")


if __name__ == "__main__":
    sys.exit(main())
