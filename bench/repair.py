"""Repair benchmark: detection F1, false alarms on clean photos, fill quality against cv2.inpaint, speed, memory.

Run: ``python -m bench.repair`` (``--quick``: fewer photos and seeds). The stage runs with its DEFAULT params.

Protocol: each clean photo (the repo's test images from ../shared/images, reduced to 8-bit RGB, plus
scikit-image's astronaut, coffee, chelsea, camera and rocket) gets random synthetic damage from
tools/damage.py (curved scratches 1-5 px wide, bright and dark; creases with their shadow; dust specks), each
with its exact mask, for several seeds.

Targets (issue 14):
- detection F1 >= 0.75 at the default sensitivity (pixels; pooled over all photos and seeds);
- on the clean photos, < 0.3% of pixels flagged (each photo);
- PSNR inside the defect mask: the stage's fill >= 6 dB above the damaged input and >= 1 dB above
  cv2.inpaint (Telea, radius 3) given the same (true) mask, in this process;
- <= 3 s per megapixel for the whole stage (detect + fill) on this machine; peak RSS <= 800 MB at 2 MP
  (measured in a fresh child process: VmHWM).
A side-by-side sheet (damaged | detected mask | repaired | clean) goes to artifacts/repair_sheet.png, with a
small copy in docs/repair_sheet.jpg.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.timing import best_of, machine
from services.repair.detect import detect
from services.repair.stage import PARAMS, _LUMA, fill, repair
from shared.contract import StageContext, validate_params
from shared.heap import configure_heap
from shared.imaging import Picture, decode_image
from shared.settings import StageSettings, cached_settings
from tools.damage import damage

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "images"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket")


def load_photos(quick: bool) -> dict[str, np.ndarray]:
    photos = {}
    for path in sorted(SHARED_IMAGES.glob("*")):
        pic = decode_image(path.read_bytes(), max_pixels=50_000_000)
        photos[path.name] = np.round(pic.rgb * 255).astype(np.uint8)
    import skimage.data as data
    for name in SKIMAGE_PHOTOS[:2] if quick else SKIMAGE_PHOTOS:
        arr = getattr(data, name)()
        photos[name] = np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr[:, :, :3])
    return photos


def visible_of(name: str) -> np.ndarray | None:
    """Pixels the photo shows (alpha > 0.5), for a photo with alpha; the stage never repairs the others."""
    path = SHARED_IMAGES / name
    if not path.exists():
        return None
    alpha = decode_image(path.read_bytes(), max_pixels=50_000_000).alpha
    return None if alpha is None else alpha > 0.5


def psnr_in(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)[mask].mean()
    return float("inf") if err == 0 else 10 * np.log10(255.0 ** 2 / err)


def run_stage(rgb8: np.ndarray, **params) -> tuple[np.ndarray, StageContext]:
    ctx = StageContext()
    out = repair(Picture(rgb=rgb8.astype(np.float32) / 255), validate_params(PARAMS, params), ctx)
    return np.round(np.clip(out.rgb, 0, 1) * 255).astype(np.uint8), ctx


def detected(rgb8: np.ndarray) -> np.ndarray:
    return detect(rgb8.astype(np.float32) @ _LUMA).mask


def sparse_on_mask(rgb8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.round(np.clip(fill(rgb8.astype(np.float32), mask), 0, 255)).astype(np.uint8)


def as_served() -> None:
    """The C library's heap set up as the repair service sets it (HEAP_KEEP_MB: freed arrays are kept for the
    next photo), so speed and memory are those of the served stage."""
    configure_heap(cached_settings(StageSettings))


def peak_rss_child() -> None:
    """Child mode: one default run of the stage on a damaged 2 MP photo, then print VmHWM in MB."""
    as_served()
    import skimage.data as data
    photo = cv2.resize(data.astronaut(), (1632, 1224), interpolation=cv2.INTER_CUBIC)
    damaged, _ = damage(photo, seed=5)
    run_stage(damaged)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)


def sheet(clean: np.ndarray, damaged: np.ndarray, mask: np.ndarray, repaired: np.ndarray) -> np.ndarray:
    mask_rgb = np.repeat((mask * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    gap = np.full((clean.shape[0], 6, 3), 255, np.uint8)
    row = np.concatenate([damaged, gap, mask_rgb, gap, repaired, gap, clean], axis=1)
    labels = np.full((28, row.shape[1], 3), 255, np.uint8)
    step = clean.shape[1] + 6
    for index, text in enumerate(("damaged", "detected mask", "repaired", "clean")):
        cv2.putText(labels, text, (index * step + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([labels, row], axis=0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child()
        return 0
    as_served()
    photos = load_photos(args.quick)
    seeds = (1, 2) if args.quick else (1, 2, 3)
    print(f"machine: {machine()}; times are best-of runs\n")
    print(f"{'photo':24s} {'F1':>6s} {'prec':>6s} {'recall':>6s} {'clean%':>7s} {'dmg dB':>7s} {'telea':>7s} "
          f"{'sparse':>7s} {'stage':>7s}  {'clean% on visible pixels (alpha photos)':s}")
    tp = fp = fn = 0
    rows = []
    worst_clean = 0.0
    for index, (name, clean) in enumerate(photos.items()):
        ptp = pfp = pfn = 0
        gains = []
        for seed in seeds:
            damaged, truth = damage(clean, seed=seed * 1000 + index)
            found = detected(damaged)
            ptp += int((found & truth).sum())
            pfp += int((found & ~truth).sum())
            pfn += int((~found & truth).sum())
            telea = cv2.inpaint(damaged, truth.astype(np.uint8), 3, cv2.INPAINT_TELEA)
            ours = sparse_on_mask(damaged, truth)
            stage_out, _ = run_stage(damaged)
            gains.append((psnr_in(damaged, clean, truth), psnr_in(telea, clean, truth), psnr_in(ours, clean, truth),
                          psnr_in(stage_out, clean, truth)))
        clean_found = detected(clean)
        clean_share = float(clean_found.mean())
        visible = visible_of(name)
        # the RGB under a transparent area is not part of the picture (the stage skips it), but it is
        # what this benchmark's detection measure sees: both are shown, the protocol's number counts
        visible_share = f"{clean_found[visible].mean() * 100:6.3f}%" if visible is not None else ""
        worst_clean = max(worst_clean, clean_share)
        tp, fp, fn = tp + ptp, fp + pfp, fn + pfn
        mean = np.mean(gains, axis=0)
        rows.append(mean)
        print(f"{name:24s} {2 * ptp / max(1, 2 * ptp + pfp + pfn):6.3f} {ptp / max(1, ptp + pfp):6.3f} "
              f"{ptp / max(1, ptp + pfn):6.3f} {clean_share * 100:6.3f}% {mean[0]:7.2f} {mean[1]:7.2f} "
              f"{mean[2]:7.2f} {mean[3]:7.2f}  {visible_share}")
    mean = np.mean(rows, axis=0)
    f1 = 2 * tp / (2 * tp + fp + fn)
    print(f"\npooled detection F1 {f1:.3f} (precision {tp / (tp + fp):.3f}, recall {tp / (tp + fn):.3f}); "
          f"target >= 0.75 -> {'PASS' if f1 >= 0.75 else 'FAIL'}")
    print(f"clean photos: worst {worst_clean * 100:.3f}% flagged; target < 0.3% -> "
          f"{'PASS' if worst_clean < 0.003 else 'FAIL'}")
    print(f"PSNR in the true mask (mean over photos): damaged {mean[0]:.2f} dB, Telea {mean[1]:.2f} dB, "
          f"sparse fill {mean[2]:.2f} dB, whole stage (own detection) {mean[3]:.2f} dB")
    print(f"  sparse - damaged = {mean[2] - mean[0]:+.2f} dB (target >= +6 -> {'PASS' if mean[2] - mean[0] >= 6 else 'FAIL'}); "
          f"sparse - Telea = {mean[2] - mean[1]:+.2f} dB (target >= +1 -> {'PASS' if mean[2] - mean[1] >= 1 else 'FAIL'})")

    import skimage.data as data
    big = cv2.resize(data.astronaut(), (1632, 1224), interpolation=cv2.INTER_CUBIC)
    big_damaged, big_truth = damage(big, seed=5)
    megapixels = big.shape[0] * big.shape[1] / 1e6
    stage_s, _ = best_of(lambda: run_stage(big_damaged), 2)
    telea_s, _ = best_of(lambda: cv2.inpaint(big_damaged, big_truth.astype(np.uint8), 3, cv2.INPAINT_TELEA), 2)
    # on a shared, oversubscribed machine wall time mostly measures the others' load: CPU time is printed too
    cpu_started = time.process_time()
    run_stage(big_damaged)
    stage_cpu = time.process_time() - cpu_started
    print(f"speed at {megapixels:.2f} MP: stage {stage_s / megapixels:.2f} s/MP wall, {stage_cpu / megapixels:.2f} "
          f"CPU-s/MP (target <= 3 -> wall {'PASS' if stage_s / megapixels <= 3 else 'FAIL'}, CPU "
          f"{'PASS' if stage_cpu / megapixels <= 3 else 'FAIL'}); Telea alone on the true mask "
          f"{telea_s / megapixels:.2f} s/MP (stage/Telea {stage_s / telea_s:.0f}x); load average {os.getloadavg()[0]:.1f}")
    child = subprocess.run([sys.executable, "-m", "bench.repair", "--rss-child"], capture_output=True, text=True,
                           cwd=ROOT, check=True)
    rss = float(child.stdout.strip().splitlines()[-1])
    print(f"peak RSS at 2 MP (fresh process, VmHWM): {rss:.0f} MB (target <= 800 -> {'PASS' if rss <= 800 else 'FAIL'})")

    clean = np.ascontiguousarray(data.astronaut()[:320, :320])
    damaged_crop, _ = damage(clean, seed=11, scratches=3, creases=1, dust=20)
    repaired_crop, _ = run_stage(damaged_crop)
    picture = sheet(clean, damaged_crop, detected(damaged_crop), repaired_crop)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "docs").mkdir(exist_ok=True)
    cv2.imwrite(str(ROOT / "artifacts" / "repair_sheet.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    small = cv2.resize(picture, (picture.shape[1] * 2 // 3, picture.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(ROOT / "docs" / "repair_sheet.jpg"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    print("sheet: artifacts/repair_sheet.png (small copy: docs/repair_sheet.jpg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
