"""The CUDA paths, checked on a GPU machine: every network at the precision the model layer picks on CUDA (fp16)
against fp32 on the same GPU and fp32 on the CPU, plus seconds per megapixel, and the upscale stage end to end.

Run: ``python -m bench.gpu_check --weights DIR`` on a machine with CUDA (``--device cpu`` runs the same code on
the CPU, to try it without a GPU). ``DIR`` holds what could be carried to a machine without network access:
- ``realesr-animevideov3.pth``: the official file (its hash is checked by the upscale stage's model store, so
  the whole stage runs from it: registry -> device and precision choice -> tiler -> network);
- ``RealESRGAN_x4plus_anime_6B.fp16.pth`` and ``maxim_3s_gopro.fp16.safetensors``: fp16-rounded copies of
  the installed weights (half the bytes), loaded into fp32 networks. Every comparison below uses the same
  weights on both sides, so the rounding of the copy does not enter the figures.
Colorize (ECCV16, SIGGRAPH17) and DeblurGAN-v2 (FPN-MobileNet) weights are not installable here: they run
with seeded random weights of the real shapes, which checks structure and precision behaviour only.
``python -m bench.gpu_check --prepare DIR`` writes those files from the local model cache.

Prints one row per network: PSNR of CUDA-auto vs CUDA-fp32 and of CUDA-fp32 vs CPU-fp32, and s/MP of each.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    err = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(peak * peak / err)


QUICK = False   # --quick: tiny inputs, to try the script on a CPU


def photo(height: int, width: int) -> np.ndarray:
    import cv2
    if QUICK:
        height, width = 64, 64
    from skimage import data
    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def timed(fn, sync) -> tuple[float, np.ndarray]:
    fn()      # warm-up (cuDNN autotuning, allocator)
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - started, out


def prepare(folder: Path) -> None:
    """fp16 copies of the installed weights, small enough to carry to the GPU machine."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from shared.model_store import ModelStore
    from shared.torch_weights import read_state_dict
    cache = ModelStore().cache_dir
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(cache / "realesr-animevideov3.pth", folder / "realesr-animevideov3.pth")
    state = read_state_dict(cache / "RealESRGAN_x4plus_anime_6B.pth")
    torch.save({k: v.half() for k, v in state.items()}, folder / "RealESRGAN_x4plus_anime_6B.fp16.pth")
    maxim = load_file(str(cache / "maxim_3s_gopro.safetensors"))
    save_file({k: v.half() for k, v in maxim.items()}, str(folder / "maxim_3s_gopro.fp16.safetensors"))
    print(f"wrote {sorted(p.name for p in folder.iterdir())}")


def networks(weights: Path):
    """(name, build(device, precision) -> callable(H x W x C float32) -> array, input, precision on CUDA)."""
    import torch

    from services.colorize.models import ECCV16, SIGGRAPH17, SPECS as COLORIZE_SPECS, _torch_model, build_network
    from services.deblur.maxim_runner import MaximRunner, load_maxim
    from services.deblur.models import MOBILENET, build_generator, deblurgan_model
    from services.upscale.models import MODELS as UPSCALE_MODELS, SPECS as UPSCALE_SPECS, _load_engine
    from shared.model_layer import select_precision

    upscale_specs = {s.name: s for s in UPSCALE_SPECS}
    colorize_specs = {s.name: s for s in COLORIZE_SPECS}

    def seeded(module):
        torch.manual_seed(0)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn_like(p) * 0.05)
        return module

    anime6b = weights / "RealESRGAN_x4plus_anime_6B.fp16.pth"
    cases = []
    for name, path in (("realesr-animevideov3", weights / "realesr-animevideov3.pth"),
                       ("RealESRGAN_x4plus_anime_6B", anime6b)):
        if path.exists():
            spec = upscale_specs[name]
            cases.append((f"upscale {name}", lambda d, p, spec=spec, path=path: _load_engine(spec, (path,), d, p),
                          photo(256, 256), spec))
    maxim = weights / "maxim_3s_gopro.fp16.safetensors"
    if maxim.exists():
        from services.deblur.models import MAXIM_SPEC
        cases.append(("deblur maxim-3s (whole 512x512 window)",
                      lambda d, p: MaximRunner(load_maxim(maxim).to(d), d, p).deblur,
                      photo(512, 512), MAXIM_SPEC))
    from services.deblur.models import SPECS_BY_NAME
    cases.append((f"deblur {MOBILENET} (random weights)",
                  lambda d, p: deblurgan_model(MOBILENET, seeded(build_generator(MOBILENET)), d, p),
                  photo(512, 512), SPECS_BY_NAME[MOBILENET]))
    lightness = (photo(256, 256) @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None] * 100
    for name in (ECCV16, SIGGRAPH17):
        spec = colorize_specs[name]
        cases.append((f"colorize {name} (random weights)",
                      lambda d, p, spec=spec, name=name: _torch_model(spec, seeded(build_network(name)), d, p),
                      lightness, spec))
    return [(label, build, image, select_precision(spec, "cuda")) for label, build, image, spec in cases]


def network_rows(weights: Path, device: str) -> list[dict]:
    import torch
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    for label, build, image, auto_precision in networks(weights):
        megapixels = image.shape[0] * image.shape[1] / 1e6
        runs = {}
        for where, precision in ((device, auto_precision), (device, "fp32"), ("cpu", "fp32")):
            if (where, precision) in runs:
                continue
            model = build(where, precision)
            seconds, out = timed(lambda: model(image), sync if where == device else (lambda: None))
            runs[(where, precision)] = (seconds / megapixels, out)
            del model
        auto_s, auto_out = runs[(device, auto_precision)]
        fp32_s, fp32_out = runs[(device, "fp32")]
        cpu_s, cpu_out = runs[("cpu", "fp32")]
        peak = 1.0 if "colorize" not in label else 128.0      # ab channels span about +-128
        rows.append({"network": label, "precision": auto_precision,
                     "psnr_auto_vs_fp32": round(psnr(auto_out, fp32_out, peak), 2),
                     "psnr_device_fp32_vs_cpu_fp32": round(psnr(fp32_out, cpu_out, peak), 2),
                     "s_per_mp": {"auto": round(auto_s, 4), "fp32": round(fp32_s, 4), "cpu_fp32": round(cpu_s, 3)},
                     "finite": bool(np.isfinite(auto_out).all())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def maxim_variants(weights: Path, device: str) -> list[dict]:
    """MAXIM-3S on one 1024x1024 window: fp32, fp16 autocast (what the runner does on CUDA) and the whole
    network in fp16 (weights too, as the runner does with bf16 on CPUs): speed and distance from fp32."""
    import copy

    import torch

    from services.deblur.maxim_runner import load_maxim
    path = weights / "maxim_3s_gopro.fp16.safetensors"
    if not path.exists():
        return []
    model = load_maxim(path).to(device).eval()
    x = torch.from_numpy(photo(1024, 1024)[None].copy()).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    half = copy.deepcopy(model).half()

    def run(net, autocast: bool, dtype=torch.float32):
        def call():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=autocast):
                return net(x.to(dtype)).float().cpu().numpy()
        return call
    rows, reference = [], None
    for label, call in (("fp32", run(model, False)), ("fp16 autocast", run(model, True)),
                        ("fp16 weights", run(half, False, torch.float16))):
        seconds, out = timed(call, sync)
        reference = out if reference is None else reference
        rows.append({"maxim 1024x1024": label, "s_per_mp": round(seconds / 1.048576, 4),
                     "psnr_vs_fp32": round(psnr(out, reference), 2), "finite": bool(np.isfinite(out).all())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def stage_row(weights: Path, device: str) -> dict:
    """The upscale stage as the service runs it (registry, precision rule, tiler), x4 on a 1 MP photo."""
    os.environ["RESTORE_MODEL_DIR"] = str(weights)
    os.environ["UPSCALE_DEVICE"] = device
    from services.upscale.app import STAGE
    from shared.contract import StageContext, validate_params
    from shared.imaging import Picture
    picture = Picture(rgb=photo(1000, 1000))
    params = validate_params(STAGE.params, {"model": "realesr-animevideov3", "scale": 4})
    ctx = StageContext()
    started = time.perf_counter()
    out = STAGE.run(picture, params, ctx)
    first = time.perf_counter() - started
    started = time.perf_counter()
    out = STAGE.run(picture, params, StageContext())
    warm = time.perf_counter() - started
    status = STAGE.models()["realesr-animevideov3"]
    row = {"stage": f"upscale x4 realesr-animevideov3, {picture.width}x{picture.height} -> "
                    f"{out.width}x{out.height}", "device": status["device"],
           "precision": status["precision"], "first_s": round(first, 2), "warm_s": round(warm, 2),
           "out": list(out.rgb.shape), "progress_reported": ctx.progress_value}
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, default=ROOT / ".gpu_models")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prepare", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny inputs (a dry run on a CPU)")
    args = parser.parse_args(argv)
    global QUICK
    QUICK = args.quick
    if args.prepare:
        prepare(args.prepare)
        return 0
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu to try the script", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    print(f"machine: {where}; torch {torch.__version__}", flush=True)
    report = {"device": where, "networks": network_rows(args.weights, args.device),
              "maxim": maxim_variants(args.weights, args.device), "stage": stage_row(args.weights, args.device)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
