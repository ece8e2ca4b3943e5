"""Deblur's automatic blur decision: accuracy, quality per class, cost on sharp photos.

Run: ``python -m bench.blur_decision`` (``--no-maxim``: decision and classical columns only;
``--crop``: side of the centred crops, default 256).

Labelled set: each photo (the repo's test images in /work/shared/images plus scikit-image's photos; a
centred crop, alpha dropped) is kept sharp, blurred with linear motion (5-25 px at several angles, the
kernel of bench/deblur.py) or with a Gaussian defocus (sigma 0.8-3), rounded to 8 bits, and each of those
also saved as JPEG q60 and decoded again: a 2 x (1 + motion + defocus) samples per photo.

Columns of the quality table (PSNR against the sharp photo, interior only, mean per class):
  skip      - the input unchanged;
  MAXIM     - always the network (the stage's tiled path, strength 1); outputs are cached on disk in
              artifacts/blur_decision/maxim_cache, keyed by the input's hash, so reruns cost nothing;
  classical - always the Wiener deconvolution with the estimated Gaussian PSF;
  auto      - what ``mode=auto`` does: skip / MAXIM with the measured strength / classical.
Targets (issue 10): decision accuracy >= 90%; on every class auto >= max(skip, MAXIM) - 0.2 dB; the
decision on a sharp photo costs <= 0.3 s per MP (timed on a full-size photo, best of 5, in this process).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bench.deblur import motion_kernel
from bench.timing import best_of

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "images"
OUT_DIR = ROOT / "artifacts" / "blur_decision"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "stereo_motorcycle")

MOTIONS = ((5, 0), (9, 45), (13, 90), (17, 135), (21, 30), (25, 120))   # (length px, angle deg)
DEFOCUS = (0.8, 1.2, 1.6, 2.2, 3.0)                                        # Gaussian sigma px
JPEG_QUALITY = 60
CLASSES = ("sharp", "motion", "defocus")


def load_photos() -> dict[str, np.ndarray]:
    """Full-size photos, float32 RGB in [0, 1] (alpha dropped: composited on white)."""
    from shared.imaging import decode_image
    photos = {}
    for path in sorted(SHARED_IMAGES.glob("*")):
        picture = decode_image(path.read_bytes(), max_pixels=50_000_000)
        rgb = picture.rgb
        if picture.alpha is not None:
            a = picture.alpha[:, :, None]
            rgb = rgb * a + (1 - a)
        photos[path.stem] = np.ascontiguousarray(rgb, dtype=np.float32)
    from skimage import data
    for name in SKIMAGE_PHOTOS:
        image = getattr(data, name)()
        image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        photos[name] = image.astype(np.float32) / 255
    return photos


def centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return np.ascontiguousarray(rgb[y:y + size, x:x + size])


def degrade(rgb: np.ndarray, kind: str, param) -> np.ndarray:
    """Blurred copy (reflected borders) rounded to 8 bits like a real upload."""
    if kind == "motion":
        out = cv2.filter2D(rgb, -1, motion_kernel(*param), borderType=cv2.BORDER_REFLECT)
    elif kind == "defocus":
        out = cv2.GaussianBlur(rgb, (0, 0), param, borderType=cv2.BORDER_REFLECT)
    else:
        out = rgb
    return np.round(np.clip(out, 0, 1) * 255).astype(np.float32) / 255


def jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    out = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(out, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"), dtype=np.float32) / 255


def conditions() -> list[tuple[str, str, object]]:
    """(label, class, parameter) for every degradation of one photo."""
    out = [("sharp", "sharp", None)]
    out += [(f"motion {length}px {angle}deg", "motion", (length, angle)) for length, angle in MOTIONS]
    out += [(f"defocus sigma {sigma}", "defocus", sigma) for sigma in DEFOCUS]
    return out


def labelled_set(photos: dict[str, np.ndarray], crop: int):
    """Yield (photo, condition label, class, jpeg?, sharp crop, degraded crop)."""
    for name, rgb in photos.items():
        sharp = centre_crop(rgb, crop)
        for label, cls, param in conditions():
            degraded = degrade(sharp, cls, param)
            yield name, label, cls, False, sharp, degraded
            yield name, label, cls, True, sharp, jpeg(degraded)


def psnr(out: np.ndarray, sharp: np.ndarray, margin: int = 12) -> float:
    a, b = out[margin:-margin, margin:-margin], sharp[margin:-margin, margin:-margin]
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


class MaximCache:
    """MAXIM outputs on disk, keyed by the input's bytes: the slow network runs once per input, ever."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._runner = None
        self.computed = 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        key = hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.float32).tobytes()).hexdigest()[:24]
        path = self.directory / f"{key}.npy"
        if path.is_file():
            return np.load(path)
        if self._runner is None:
            from services.deblur.models import MAXIM, DeblurModels
            self._runner = DeblurModels().get(MAXIM)[1]
        from services.deblur.models import MAXIM
        from services.deblur.stage import deblur_array, tiling_for
        out = deblur_array(rgb, self._runner, **tiling_for(MAXIM, *rgb.shape[:2])).astype(np.float32)
        np.save(path, out)
        self.computed += 1
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--no-maxim", action="store_true", help="skip the MAXIM and auto columns")
    parser.add_argument("--dump", action="store_true", help="print every sample's measurements")
    args = parser.parse_args(argv)

    from services.deblur.blur_estimate import estimate_blur
    photos = load_photos()
    print(f"== blur decision: {len(photos)} photos ({', '.join(photos)}), centred crops <= {args.crop} px, "
          f"each sharp / {len(MOTIONS)} motion / {len(DEFOCUS)} defocus, plain and JPEG q{JPEG_QUALITY}")
    samples = []
    for name, label, cls, is_jpeg, sharp, degraded in labelled_set(photos, args.crop):
        estimate = estimate_blur(degraded)
        samples.append((name, label, cls, is_jpeg, sharp, degraded, estimate))
        if args.dump:
            print(f"{name:18s} {label:22s} {'jpeg' if is_jpeg else 'png ':4s} -> {estimate.kind:8s} "
                  f"w={estimate.width:.2f} max={estimate.width_max:.2f} min={estimate.width_min:.2f} "
                  f"an={estimate.anisotropy:.2f} len={estimate.motion_length:.1f} "
                  f"sig={estimate.defocus_sigma:.2f} n={estimate.edges}")
    print_confusion(samples)
    return 0


def print_confusion(samples) -> float:
    matrix = {(truth, guess): 0 for truth in CLASSES for guess in CLASSES}
    for sample in samples:
        matrix[(sample[2], sample[6].kind)] += 1
    correct = sum(matrix[(c, c)] for c in CLASSES)
    accuracy = correct / len(samples)
    print(f"\n-- decision confusion matrix (rows: truth, columns: decision), {len(samples)} samples")
    print(f"{'':10s}" + "".join(f"{c:>10s}" for c in CLASSES) + f"{'recall':>10s}")
    for truth in CLASSES:
        row = [matrix[(truth, guess)] for guess in CLASSES]
        print(f"{truth:10s}" + "".join(f"{n:10d}" for n in row) + f"{row[CLASSES.index(truth)] / max(sum(row), 1):10.1%}")
    print(f"accuracy {accuracy:.1%} (target >= 90%): {'PASS' if accuracy >= 0.9 else 'FAIL'}")
    return accuracy


if __name__ == "__main__":
    sys.exit(main())
