"""Development check of the repair detector on seeds the benchmark does not use.

Run: ``python -m tools.repair_tune`` (``--sensitivity 0.6``; ``--quick``: one seed).

The benchmark (bench/repair.py) draws damage with seeds 1000-3000 + i; tuning looks only at seeds 7000+i and
8000+i, on the benchmark's photos (so the numbers are comparable) and on textured photos for false alarms:

- per photo: pixel F1 / precision / recall and the share of the clean photo flagged;
- per defect kind (scratches, creases, dust drawn alone): recall and precision;
- the recall ceiling: the share of true-mask pixels whose change is tiny (max over RGB < 10 and < 20 levels),
  and how much of what is missed they make up.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.repair import load_photos, visible_of
from services.repair.detect import detect
from services.repair.stage import _LUMA  # the luminance the stage detects on
from tools.damage import damage

KINDS = {"scratch": dict(scratches=3, creases=0, dust=0), "crease": dict(scratches=0, creases=1, dust=0),
         "dust": dict(scratches=0, creases=0, dust=30)}
TEXTURES = ("brick", "grass", "gravel", "immunohistochemistry")


def found_in(rgb8: np.ndarray, sensitivity: float) -> np.ndarray:
    return detect(rgb8.astype(np.float32) @ _LUMA, sensitivity=sensitivity).mask


def scores(tp: int, fp: int, fn: int) -> str:
    return (f"F1 {2 * tp / max(1, 2 * tp + fp + fn):.3f}  prec {tp / max(1, tp + fp):.3f}  "
            f"recall {tp / max(1, tp + fn):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sensitivity", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    photos = load_photos(False)
    seeds = (7000,) if args.quick else (7000, 8000)
    started = time.perf_counter()
    print(f"{'photo':24s} {'F1':>6s} {'prec':>6s} {'recall':>6s} {'clean%':>7s} {'visible-only clean%':s}")
    total = np.zeros(3, np.int64)
    tiny = np.zeros(2, np.int64)
    tiny_missed = np.zeros(2, np.int64)
    worst = 0.0
    for index, (name, clean) in enumerate(photos.items()):
        counts = np.zeros(3, np.int64)
        for base in seeds:
            damaged, truth = damage(clean, seed=base + index)
            found = found_in(damaged, args.sensitivity)
            counts += [(found & truth).sum(), (found & ~truth).sum(), (~found & truth).sum()]
            change = np.abs(damaged.astype(np.int16) - clean.astype(np.int16)).max(axis=2)
            for slot, bar in enumerate((10, 20)):
                tiny[slot] += (truth & (change < bar)).sum()
                tiny_missed[slot] += (truth & ~found & (change < bar)).sum()
        clean_found = found_in(clean, args.sensitivity)
        flagged = float(clean_found.mean())
        visible = visible_of(name)
        worst = max(worst, flagged)
        total += counts
        tp, fp, fn = counts
        print(f"{name:24s} {2 * tp / max(1, 2 * tp + fp + fn):6.3f} {tp / max(1, tp + fp):6.3f} "
              f"{tp / max(1, tp + fn):6.3f} {flagged * 100:6.3f}% "
              f"{'' if visible is None else f'{clean_found[visible].mean() * 100:6.3f}%'}")
    tp, fp, fn = total
    print(f"\npooled: {scores(tp, fp, fn)}; worst clean photo {worst * 100:.3f}% flagged")
    truth_pixels = tp + fn
    print(f"recall ceiling: true-mask pixels changed < 10 levels {tiny[0] / truth_pixels:.3f}, < 20 levels "
          f"{tiny[1] / truth_pixels:.3f}; of the missed pixels: {tiny_missed[0] / max(1, fn):.3f} and "
          f"{tiny_missed[1] / max(1, fn):.3f}")

    print("\nper defect kind (drawn alone; false alarms are the whole photo's):")
    for kind, amounts in KINDS.items():
        counts = np.zeros(3, np.int64)
        for index, (name, clean) in enumerate(photos.items()):
            for base in seeds:
                damaged, truth = damage(clean, seed=base + index, **amounts)
                found = found_in(damaged, args.sensitivity)
                counts += [(found & truth).sum(), (found & ~truth).sum(), (~found & truth).sum()]
        print(f"  {kind:8s} {scores(*counts)}")

    import skimage.data as data
    print("\ntextured photos, clean (false alarms):")
    for name in TEXTURES:
        grey = getattr(data, name)()
        rgb = np.repeat(grey[:, :, None], 3, axis=2) if grey.ndim == 2 else grey[:, :, :3]
        print(f"  {name:22s} {found_in(np.ascontiguousarray(rgb), args.sensitivity).mean() * 100:6.3f}%")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
