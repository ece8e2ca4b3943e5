"""Colorize speed: seconds for a 1 MP and a 2 MP photo per model, with a breakdown, against the reference.

    python -m bench.colorize [--sizes 1,2] [--models eccv16,siggraph17] [--repeats 3]

The official weights cannot be downloaded here, so both networks run with RANDOM weights (the same state
dict for ours and the reference): fine for timing, meaningless as pictures. Per photo (a gray copy of
scikit-image's astronaut resized to the size):

* ours: ``prepare`` (full-size L + the network's resized L), ``network`` (at render size 256),
  ``finish`` (ab upsampled to full size, joined with the full-size L, Lab -> sRGB with gamut mapping);
* reference (PyPI rz-colorization 1.0.5): ``preprocess_img`` + network + ``postprocess_tens``
  (scikit-image float64 Lab at full size, torch bilinear upsampling);
* the full-size part ratio (ours / reference) and the PSNR of our output against the reference's
  (``gamut=clip`` is the reference's behaviour; the default keep-lightness differs where colours are out
  of gamut, which random weights produce often);
* the opt-in bfloat16 network (COLORIZE_PRECISION=bf16): its time and its output's PSNR from float32.
Each part is the best of ``--repeats`` runs (the network: best of 2), in this process, same machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import cv2
import numpy as np
import torch

from services.colorize.models import ECCV16, SIGGRAPH17, build_network, lightness_network
from services.colorize.stage import colorize_array
from bench.timing import best_of
from tools.colorize_reference import INSTALL_HINT, import_colorizers
from tools.colorize_weights import random_state_dict


def reference_module():
    try:
        return import_colorizers()
    except ImportError:
        sys.exit(f"the reference is missing: {INSTALL_HINT}")


def gray_photo(megapixels: float) -> np.ndarray:
    import skimage.data
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    rgb = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2", help="megapixels, comma separated")
    parser.add_argument("--models", default=f"{ECCV16},{SIGGRAPH17}")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    reference = reference_module()
    warnings.filterwarnings("ignore", message="Conversion from CIE-LAB")
    print(f"colorize benchmark: RANDOM weights (timing only), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, render size 256")
    rows = []
    for name in args.models.split(","):
        state = random_state_dict(build_network(name).state_dict(), name, seed=0)
        ours_net = build_network(name)
        ours_net.load_state_dict(state)
        runner = lightness_network(name, ours_net.eval())
        bf16_runner = lightness_network(name, ours_net, precision="bf16")
        ref_net = (reference.eccv16 if name == ECCV16 else reference.siggraph17)(pretrained=False)
        ref_net.load_state_dict(state)
        ref_net.eval()
        for megapixels in (float(s) for s in args.sizes.split(",")):
            rgb8 = gray_photo(megapixels)
            rgb = rgb8.astype(np.float32) / 255
            # ours: the stage's own function, parts timed inside it
            parts: list[dict] = []
            outputs = {}
            for _ in range(max(2, args.repeats)):
                timing: dict[str, float] = {}
                outputs["keep"] = colorize_array(rgb, runner, 256, timings=timing)
                parts.append(timing)
            ours = {k: min(p[k] for p in parts) for k in parts[0]}
            outputs["clip"] = colorize_array(rgb, runner, 256, keep_lightness=False)
            colorize_array(rgb, bf16_runner, 256)  # warm-up: bf16 kernels are prepared on first use
            bf16_parts: dict[str, float] = {}
            bf16_out = colorize_array(rgb, bf16_runner, 256, timings=bf16_parts)
            bf16 = (bf16_parts["network"], psnr(bf16_out, outputs["keep"]))
            # reference
            t_pre, (tens_orig, tens_rs) = best_of(lambda: reference.preprocess_img(rgb8, HW=(256, 256)), args.repeats)
            with torch.inference_mode():
                t_net, ab = best_of(lambda: ref_net(tens_rs), 2)
            t_post, expected = best_of(lambda: reference.postprocess_tens(tens_orig, ab), args.repeats)
            ours_full = ours["prepare"] + ours["finish"]
            ref_full = t_pre + t_post
            rows.append((name, f"{rgb.shape[1]}x{rgb.shape[0]}", ours, ours_full, t_pre, t_net, t_post, ref_full,
                         psnr(outputs["clip"], expected), psnr(outputs["keep"], expected), bf16))
            r = rows[-1]
            print(f"{name:10s} {r[1]:>9s}: ours {ours_full + ours['network']:6.2f} s (prepare {ours['prepare']:.3f}, "
                  f"network {ours['network']:.2f}, finish {ours['finish']:.3f}); reference "
                  f"{ref_full + t_net:6.2f} s (preprocess {t_pre:.3f}, network {t_net:.2f}, postprocess "
                  f"{t_post:.3f}); full-size part {ours_full * 1000:.0f} ms vs {ref_full * 1000:.0f} ms = "
                  f"{ours_full / ref_full:.3f}x; PSNR vs reference: gamut=clip {r[8]:.1f} dB, "
                  f"keep-lightness {r[9]:.1f} dB; opt-in bf16 network {bf16[0]:.2f} s, {bf16[1]:.1f} dB from fp32",
                  flush=True)
    print("\n| model | size | ours total s | network s | full-size part ms (prepare + finish) | reference total s "
          "| reference full-size ms | full-size ratio | PSNR clip / keep-lightness vs reference dB "
          "| bf16 network s (dB from fp32) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, size, ours, ours_full, t_pre, t_net, t_post, ref_full, p_clip, p_keep, bf16 in rows:
        print(f"| {name} | {size} | {ours_full + ours['network']:.2f} | {ours['network']:.2f} | "
              f"{ours_full * 1000:.0f} ({ours['prepare'] * 1000:.0f} + {ours['finish'] * 1000:.0f}) | "
              f"{ref_full + t_net:.2f} | {ref_full * 1000:.0f} | {ours_full / ref_full:.3f} | "
              f"{p_clip:.1f} / {p_keep:.1f} | {bf16[0]:.2f} ({bf16[1]:.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
