"""Tone benchmark: faded prints restored, unfaded photos left alone, speed, and where the stage goes in the chain.

Run: ``python -m bench.tone`` (``--quick``: fewer photos, no chain-position part). The stage runs with its
DEFAULT params (``mode=auto``), as simple mode runs it.

Protocol: each real photo (the repo's test images from /work/shared/images plus scikit-image's astronaut,
coffee, chelsea, rocket and camera; black-and-white ones included) is faded synthetically with a dye-fading
model (``fade_print``) at strengths 0.33, 0.66 and 1.0: per-channel density loss (each dye's reflectance
``x ** k_c``, the cyan dye fading fastest), lifted blacks, lowered whites with paper yellowing (blue lowest),
all in linear light, then rounded to 8 bits like a scan. The dye rates vary per photo (seeded). CIEDE2000 to
the original is averaged over the visible pixels for the faded input, for a simple baseline (grey world
plus a joint 1/99 percentile stretch, in the same process) and for the stage.

Targets (issue 13):
- mean CIEDE2000 reduced by >= 50% against the faded input, and lower than the baseline's;
- unfaded photos through the stage: mean CIEDE2000 to themselves <= 1.0;
- <= 0.3 s per megapixel (best of 3 on a 2 MP photo).
The side-by-side sheet (faded | baseline | stage | original, strength 0.66) is written to
artifacts/tone_sheet.png; ``--docs`` also writes a small copy to docs/tone_sheet.jpg for the README.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

from bench.timing import best_of, machine
from services.tone.stage import PARAMS, tone
from shared.contract import StageContext, validate_params
from shared.imaging import Picture, decode_image

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "images"
STRENGTHS = (0.33, 0.66, 1.0)
SHEET_STRENGTH = 0.66
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")
DOCS_PHOTOS = ("children-alpha.png", "gray-00017.png", "astronaut", "coffee", "chelsea", "rocket")
SHEET_TITLE = "faded  |  baseline (grey world + stretch)  |  tone stage  |  original"


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v > 0.04045, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v > 0.0031308, 1.055 * v ** (1 / 2.4) - 0.055, 12.92 * v)


def fade_print(rgb: np.ndarray, strength: float, monochrome: bool = False, seed: int = 0) -> np.ndarray:
    """A synthetic faded print of ``rgb`` (float [0, 1]), rounded to 8 bits like a scan.

    In linear light: the photo is printed (reflectance ``r = r_min + (1 - r_min) x``, maximum density
    1.9-2.4 per photo), each dye loses part of its density (``r ** k_c``; cyan, which absorbs red, fades
    fastest; the silver of a black-and-white print loses density evenly), the paper yellows (a gain per
    channel, blue lowest) and the scan adds a little flare (lifting every black a bit more):
    ``faded_c = paper_c * r ** k_c + flare``. Parameters are drawn per photo from ``seed``.
    """
    rng = np.random.default_rng(seed)
    s = float(strength)
    r_min = 10.0 ** -rng.uniform(1.9, 2.4)
    if monochrome:
        loss = np.full(3, rng.uniform(0.25, 0.4))
    else:
        loss = np.array([rng.uniform(0.35, 0.55), rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.22)])
    paper = 1.0 - s * np.array([0.04, 0.09, 0.24]) * rng.uniform(0.7, 1.3)
    flare = s * rng.uniform(0.002, 0.006)
    k = 1.0 - s * loss
    printed = r_min + (1.0 - r_min) * srgb_to_linear(np.clip(rgb, 0.0, 1.0))
    faded = paper * printed ** k + flare
    return np.round(linear_to_srgb(faded) * 255.0) / 255.0


def baseline(rgb: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    """Grey world (each channel scaled to the mean of the channel means) plus a joint 1/99 percentile stretch."""
    visible = rgb[alpha > 0.5] if alpha is not None and (alpha > 0.5).any() else rgb.reshape(-1, 3)
    means = visible.mean(axis=0)
    gains = means.mean() / np.maximum(means, 1e-4)
    balanced = np.clip(rgb * gains, 0.0, 1.0)
    lo, hi = np.percentile(np.clip(visible * gains, 0, 1), [1, 99])
    return np.clip((balanced - lo) / max(hi - lo, 1e-3), 0.0, 1.0)


def run_stage(rgb: np.ndarray, alpha: np.ndarray | None = None, **params) -> tuple[np.ndarray, dict]:
    ctx = StageContext()
    out = tone(Picture(rgb=rgb.astype(np.float32), alpha=alpha), validate_params(PARAMS, params), ctx)
    return out.rgb, ctx.response_headers


def delta_e(a: np.ndarray, b: np.ndarray, alpha: np.ndarray | None = None) -> float:
    de = deltaE_ciede2000(rgb2lab(np.clip(a, 0, 1)), rgb2lab(np.clip(b, 0, 1)))
    if alpha is not None and (alpha > 0.5).any():
        de = de[alpha > 0.5]
    return float(de.mean())


def load_photos(quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray | None, bool]]:
    """name -> (float RGB at 8-bit precision, alpha or None, is black-and-white)."""
    photos = {}
    for path in sorted(SHARED_IMAGES.glob("*")):
        pic = decode_image(path.read_bytes(), max_pixels=50_000_000)
        rgb = np.round(pic.rgb * 255) / 255
        gray = bool(np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]))
        photos[path.name] = (rgb, pic.alpha, gray)
    try:
        import skimage.data as data
        for name in SKIMAGE_PHOTOS[:2] + SKIMAGE_PHOTOS[-1:] if quick else SKIMAGE_PHOTOS:
            arr = getattr(data, name)()
            gray = arr.ndim == 2
            if gray:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            photos[name] = (arr[:, :, :3].astype(np.float64) / 255, None, gray)
    except ImportError:
        print("scikit-image's photos are missing: only the shared test images are used", file=sys.stderr)
    return photos


def to8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def sheet_row(images: list[np.ndarray], alpha: np.ndarray | None, height: int = 220) -> np.ndarray:
    tiles = []
    for image in images:
        if alpha is not None:   # shown over white, as a viewer would
            image = image * alpha[:, :, None] + (1.0 - alpha[:, :, None])
        h, w = image.shape[:2]
        tiles.append(cv2.resize(to8(image), (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA))
        tiles.append(np.full((height, 6, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)


def save_sheet(rows: list[np.ndarray], path: Path, max_width: int | None = None) -> None:
    width = max(r.shape[1] for r in rows)
    title = np.full((34, width, 3), 255, np.uint8)
    cv2.putText(title, SHEET_TITLE, (4, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 1, cv2.LINE_AA)
    padded = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    sheet = np.concatenate([title] + padded, axis=0)
    if max_width and sheet.shape[1] > max_width:
        scale = max_width / sheet.shape[1]
        sheet = cv2.resize(sheet, (max_width, round(sheet.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 82] if path.suffix == ".jpg" else []
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), params)


def quality(photos: dict, sheet_docs: bool) -> bool:
    print("\n== faded prints: mean CIEDE2000 to the original (lower is better) ==")
    print(f"{'photo':<22}{'strength':>9}{'faded':>8}{'baseline':>10}{'stage':>8}  decision")
    totals = {s: np.zeros(3) for s in STRENGTHS}
    rows = []
    for index, (name, (rgb, alpha, gray)) in enumerate(photos.items()):
        for strength in STRENGTHS:
            faded = fade_print(rgb, strength, monochrome=gray, seed=index)
            base = baseline(faded, alpha)
            out, headers = run_stage(faded, alpha)
            scores = np.array([delta_e(x, rgb, alpha) for x in (faded, base, out)])
            totals[strength] += scores
            decision = headers.get("X-Tone-Decision", "")
            verdict = decision.split('"decision":"')[1].split('"')[0] if '"decision":"' in decision else "?"
            print(f"{name:<22}{strength:>9.2f}{scores[0]:>8.2f}{scores[1]:>10.2f}{scores[2]:>8.2f}  {verdict}")
            if strength == SHEET_STRENGTH:
                rows.append((name, sheet_row([faded, base, out, rgb], alpha)))
    print(f"\n{'strength':<10}{'faded':>8}{'baseline':>10}{'stage':>8}{'reduction':>11}")
    overall = np.zeros(3)
    for strength, total in totals.items():
        mean = total / len(photos)
        overall += mean / len(STRENGTHS)
        print(f"{strength:<10.2f}{mean[0]:>8.2f}{mean[1]:>10.2f}{mean[2]:>8.2f}{1 - mean[2] / mean[0]:>10.0%}")
    reduction = 1 - overall[2] / overall[0]
    print(f"{'all':<10}{overall[0]:>8.2f}{overall[1]:>10.2f}{overall[2]:>8.2f}{reduction:>10.0%}")
    ok = reduction >= 0.5 and overall[2] < overall[1]
    print(f"target: reduction >= 50% and better than baseline -> {'PASS' if ok else 'FAIL'}")
    sheet = ROOT / "artifacts" / "tone_sheet.png"
    save_sheet([row for _, row in rows], sheet)
    print(f"sheet (faded | baseline | stage | original, strength {SHEET_STRENGTH}): {sheet}")
    if sheet_docs:
        save_sheet([row for name, row in rows if name in DOCS_PHOTOS], ROOT / "docs" / "tone_sheet.jpg",
                   max_width=900)
        print(f"small copy: {ROOT / 'docs' / 'tone_sheet.jpg'}")
    return ok


def unfaded(photos: dict) -> bool:
    print("\n== unfaded photos through the stage (auto): mean CIEDE2000 to themselves ==")
    values = []
    for name, (rgb, alpha, _) in photos.items():
        out, headers = run_stage(rgb, alpha)
        values.append(delta_e(out, rgb, alpha))
        decision = headers.get("X-Tone-Decision", "")
        print(f"{name:<22}{values[-1]:>8.3f}  {decision[:150]}")
    mean = float(np.mean(values))
    ok = mean <= 1.0
    print(f"mean {mean:.3f} (target <= 1.0) -> {'PASS' if ok else 'FAIL'}")
    return ok


def speed() -> bool:
    import skimage.data as data
    rgb = cv2.resize(data.astronaut().astype(np.float32) / 255, (1414, 1414), interpolation=cv2.INTER_CUBIC)
    faded = fade_print(rgb, 0.66).astype(np.float32)
    mp = faded.shape[0] * faded.shape[1] / 1e6
    stage_s, _ = best_of(lambda: run_stage(faded, mode="force"), 3)
    base_s, _ = best_of(lambda: baseline(faded), 3)
    ok = stage_s / mp <= 0.3
    print(f"\n== speed ({faded.shape[1]}x{faded.shape[0]}, {mp:.2f} MP, best of 3, mode=force) ==")
    print(f"stage {stage_s / mp:.3f} s/MP (target <= 0.3) -> {'PASS' if ok else 'FAIL'}; "
          f"baseline {base_s / mp:.3f} s/MP; ratio stage/baseline {stage_s / base_s:.2f}")
    return ok


def chain_position(photos: dict) -> None:
    """Tone before or after denoise on a noisy faded scan: which order lands closer to the original?"""
    from services.denoise.stage import PARAMS as DENOISE_PARAMS, denoise
    print("\n== chain position: noisy faded scan (sigma 8 levels), CIEDE2000 to the original ==")
    print(f"{'photo':<22}{'tone->denoise':>15}{'denoise->tone':>15}")
    rng = np.random.default_rng(0)
    denoise_params = validate_params(DENOISE_PARAMS, {})

    def run_denoise(rgb, alpha):
        return denoise(Picture(rgb=rgb.astype(np.float32), alpha=alpha), denoise_params, StageContext()).rgb

    sums = np.zeros(2)
    chosen = [n for n in photos][:4]
    for index, name in enumerate(chosen):
        rgb, alpha, gray = photos[name]
        faded = fade_print(rgb, SHEET_STRENGTH, monochrome=gray, seed=index)
        noise = rng.normal(0, 8 / 255, faded.shape[:2] + ((1,) if gray else (3,)))
        noisy = np.clip(np.round((faded + noise) * 255) / 255, 0, 1)
        first = run_denoise(run_stage(noisy, alpha)[0], alpha)
        second = run_stage(run_denoise(noisy, alpha), alpha)[0]
        scores = np.array([delta_e(first, rgb, alpha), delta_e(second, rgb, alpha)])
        sums += scores
        print(f"{name:<22}{scores[0]:>15.2f}{scores[1]:>15.2f}")
    mean = sums / len(chosen)
    print(f"{'mean':<22}{mean[0]:>15.2f}{mean[1]:>15.2f}  -> "
          f"{'tone before denoise' if mean[0] < mean[1] else 'tone after denoise'} is closer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer photos, no chain-position part")
    parser.add_argument("--docs", action="store_true", help="also write the small sheet docs/tone_sheet.jpg")
    args = parser.parse_args(argv)
    photos = load_photos(args.quick)
    results = [quality(photos, args.docs), unfaded(photos), speed()]
    if not args.quick:
        chain_position(photos)
    print(f"\nmachine: {machine()}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
