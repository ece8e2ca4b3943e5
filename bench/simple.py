"""Simple mode end to end, and the cost of the hops between gateway and stages.

Run: ``python -m bench.simple`` (``--sections hops,simple,connected``; ``--sizes 1,2``; ``--upscales none,x2``;
``--kinds sharp,motion``). Each section starts its own stage processes and gateway (real uvicorn processes on
free loopback ports, the installed models) and stops them afterwards.

hops      - denoise -> post-denoise -> sharpen on a 2 MP photo: through the gateway as configured by default
            (raster transport; post-denoise and sharpen fused into one postprocess call), through a gateway that
            calls the stage once per step (FUSE_STEPS=false), through one that also uses PNG on every hop (as
            before), and the same stage functions in one process (decode the upload, three calls, encode PNG).
            --runs rounds, each running every path once; the ratio is best against best, as in every bench
            here (the least disturbed run of each); the median of each round's own ratio is printed beside it.
            Target (issue 10): the default gateway within 1.15x of one process.
simple    - /v1/restore with the defaults (colorize auto) on 1 MP and 2 MP photos, sharp and motion-blurred
            (15 px), upscale none and x2; per-stage times (the gateway's X-Stage-Times) and s/MP beside the
            seed's 15-25 s per MP. Targets with the models installable here, upscale none: sharp <= 20 s/MP,
            motion-blurred <= 60 s/MP.
connected - TIMING ONLY: the chain a connected install gets by default (DeblurGAN-v2 FPN-MobileNet,
            realesr-general-x4v3, ECCV16) with same-shape RANDOM weights (the real files cannot be fetched
            here), in one process, on the b/w version of the 1 MP photo so colorize runs: its outputs are
            meaningless, its times are not.

Photos: mosaics of centred crops of real photos (scikit-image and /work/shared/images), so the "sharp" photo
has real detail at every size; "motion" is the same mosaic blurred with a 15 px line at 30 degrees.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from bench.deblur import motion_kernel
from bench.timing import best_of, machine

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("repair", "denoise", "deblur", "tone", "colorize", "upscale", "postprocess")
SEED_SECONDS_PER_MP = "15-25"
HOP_CHAIN = [{"stage": "denoise"}, {"stage": "post-denoise"}, {"stage": "sharpen"}]


# ------------------------------------------------------------------------------------------ photos

def mosaic(width: int, height: int, cell: int = 500) -> np.ndarray:
    """A width x height RGB float32 photo tiled from centred crops of real photos."""
    from skimage import data
    sources = [data.astronaut(), data.coffee(), data.rocket(), data.chelsea(), data.camera(),
               data.stereo_motorcycle()[0], data.immunohistochemistry(), data.cat()]
    tiles = []
    for image in sources:
        image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
        h, w = image.shape[:2]
        side = min(h, w, cell)
        y, x = (h - side) // 2, (w - side) // 2
        tiles.append(cv2.resize(image[y:y + side, x:x + side], (cell, cell), interpolation=cv2.INTER_AREA)
                     if side != cell else image[y:y + side, x:x + side])
    out = np.zeros((height, width, 3), np.uint8)
    index = 0
    for y in range(0, height, cell):
        for x in range(0, width, cell):
            tile = tiles[index % len(tiles)]
            index += 1
            out[y:y + cell, x:x + cell] = tile[:min(cell, height - y), :min(cell, width - x)]
    return out.astype(np.float32) / 255


def photo_png(megapixels: int, kind: str) -> bytes:
    from shared.imaging import Picture, encode_png
    width, height = {1: (1000, 1000), 2: (2000, 1000)}[megapixels]
    rgb = mosaic(width, height)
    if kind == "motion":
        rgb = cv2.filter2D(rgb, -1, motion_kernel(15, 30), borderType=cv2.BORDER_REFLECT)
    return encode_png(Picture(rgb=np.clip(rgb, 0, 1)))


# ------------------------------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Services:
    """Stage processes plus one or more gateways (each with its own env), stopped on exit."""

    def __init__(self, stages: tuple[str, ...], gateways: dict[str, dict[str, str]]):
        env = dict(os.environ, PYTHONPATH=str(ROOT), LOG_LEVEL="warning")
        self.urls = {name: f"http://127.0.0.1:{free_port()}" for name in stages}
        self.processes = []
        self.log = open(ROOT / "artifacts" / "bench_simple.log", "ab")
        for name in stages:
            self._start(f"services.{name}.app:app", self.urls[name], env)
        gateway_env = dict(env, STAGE_TIMEOUT_S="3600",
                           **{f"{name.upper()}_URL": url for name, url in self.urls.items()})
        self.gateways = {}
        for label, extra in gateways.items():
            url = f"http://127.0.0.1:{free_port()}"
            self._start("gateway.app:app", url, dict(gateway_env, **extra))
            self.gateways[label] = url
        for url in list(self.urls.values()) + list(self.gateways.values()):
            self._wait(url)

    def _start(self, app: str, url: str, env: dict) -> None:
        port = url.rsplit(":", 1)[1]
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", port, "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT))

    @staticmethod
    def _wait(url: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{url} did not become healthy")

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.log.close()


def post(url: str, image: bytes, timeout: float = 3600, client: httpx.Client | None = None,
         **fields) -> httpx.Response:
    data = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in fields.items()}
    response = (client or httpx).post(url, files={"image": ("photo.png", image, "image/png")}, data=data,
                                      timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {response.status_code} {response.text[:300]}")
    return response


# ------------------------------------------------------------------------------------------ sections

def in_process_chain(upload: bytes) -> bytes:
    """The hop chain's stage functions in one process: decode, denoise, post-denoise, sharpen, encode PNG."""
    from gateway.chains import STEPS
    from services.denoise.app import STAGE as DENOISE
    from services.postprocess.app import STAGE as POSTPROCESS
    from shared.contract import StageContext, validate_params
    from shared.imaging import decode_image, encode_png
    picture = decode_image(upload)
    for step in HOP_CHAIN:
        service, pinned = STEPS[step["stage"]]
        stage = DENOISE if service == "denoise" else POSTPROCESS
        picture = stage.run(picture, validate_params(stage.params, pinned), StageContext())
    return encode_png(picture)


def hops_section(runs: int) -> None:
    upload = photo_png(2, "sharp")
    print("\n== hops: denoise -> post-denoise -> sharpen, 2 MP (2000x1000), best of", runs)
    default, per_step, png = "gateway (default)", "gateway, one call per step", "gateway, one call per step, PNG"
    with Services(("denoise", "postprocess"), {
            default: {}, per_step: {"FUSE_STEPS": "false"},
            png: {"FUSE_STEPS": "false", "STAGE_TRANSPORT": "png"}}) as services, httpx.Client() as client:
        chain = [{"stage": s["stage"]} for s in HOP_CHAIN]
        calls = {"one process": lambda: in_process_chain(upload)}
        # One client kept open, as the UI and the CLI keep theirs: a new httpx client per call would add its
        # own set-up (SSL context, connection) to the gateway's side, which is not the hops' cost.
        for label in (default, per_step, png):
            calls[label] = lambda url=services.gateways[label]: post(url + "/v1/pipeline", upload, client=client,
                                                                     stages=chain)
        times: dict[str, list[float]] = {label: [] for label in calls}
        outputs: dict = {}
        for _ in range(runs):  # interleaved, so load changes hit every variant alike
            for label, call in calls.items():
                seconds, outputs[label] = best_of(call, 1)
                times[label].append(seconds)
    base = min(times["one process"])
    # Each round ran every path back to back: the median of the rounds' own ratios shows the typical request,
    # best against best the cost of the hops themselves.
    paired = {label: float(np.median([t / b for t, b in zip(values, times["one process"])]))
              for label, values in times.items()}
    print(f"{'path':36s}{'stage calls':>12s}{'best s':>9s}{'best/best':>10s}{'median ratio':>14s}")
    for label, values in times.items():
        calls_made = {"one process": "-", default: "2", per_step: "3", png: "3"}[label]
        print(f"{label:36s}{calls_made:>12s}{min(values):9.3f}{min(values) / base:9.2f}x{paired[label]:13.2f}x")
    from shared.imaging import decode_image
    one = decode_image(outputs["one process"]).rgb
    for label in (default, per_step):
        diff = float(np.abs(decode_image(outputs[label].content).rgb - one).max() * 255)
        print(f"{label}: differs from one process by at most {diff:.0f}/255")
    print("(one process keeps floats between stages; each hop rounds to the image's bit depth)")
    print(f"raster hops identical to PNG hops: {outputs[per_step].content == outputs[png].content}")
    print(f"default gateway reports the steps {list(json.loads(outputs[default].headers['x-stage-times']))} "
          "(post-denoise and sharpen ran in one postprocess call)")
    ratio = min(times[default]) / base
    print(f"gateway / one process = {ratio:.2f}x, best against best over {runs} rounds (target <= 1.15x): "
          f"{'PASS' if ratio <= 1.15 else 'FAIL'}; the median of the rounds' own ratios is {paired[default]:.2f}x")


def simple_section(sizes: list[int], kinds: list[str], upscales: list[str]) -> None:
    print("\n== simple mode: /v1/restore, colorize auto (the default), installed models")
    with Services(STAGES, {"gateway": {}}) as services:
        stages = httpx.get(services.gateways["gateway"] + "/v1/stages", timeout=60).json()["services"]
        for name in ("deblur", "colorize", "upscale"):
            info = stages[name].get("info", {})
            print(f"   {name}: status {stages[name]['status']}, default model {info.get('default_model')}")
        print(f"{'photo':18s}{'upscale':>8s}{'total s':>9s}{'s/MP':>7s}  per stage (s; seed: "
              f"{SEED_SECONDS_PER_MP} s/MP)")
        for megapixels in sizes:
            for kind in kinds:
                upload = photo_png(megapixels, kind)
                for upscale in upscales:
                    started = time.perf_counter()
                    try:
                        response = post(services.gateways["gateway"] + "/v1/restore", upload,
                                        colorize="auto", upscale=upscale)
                    except RuntimeError as exc:
                        print(f"{megapixels} MP {kind:8s}{upscale:>8s}  failed: {exc}")
                        continue
                    total = time.perf_counter() - started
                    stage_times = json.loads(response.headers["x-stage-times"])
                    per_stage = ", ".join(f"{n} {t['gateway_ms'] / 1000:.2f}" for n, t in stage_times.items())
                    skipped = response.headers.get("x-skipped-stages")
                    decision = response.headers.get("x-deblur-decision", "-")
                    print(f"{megapixels} MP {kind:12s}{upscale:>8s}{total:9.1f}{total / megapixels:7.1f}  "
                          f"{per_stage}; deblur decision {decision}"
                          + (f"; skipped {skipped}" if skipped else ""), flush=True)


def connected_section(kinds: list[str]) -> None:
    """TIMING ONLY: random-weight DeblurGAN-v2 MobileNet, realesr-general-x4v3 and ECCV16, in one process."""
    import torch

    from services.colorize.models import ECCV16, build_network, lightness_network
    from services.colorize.stage import colorize_array
    from services.deblur.models import MOBILENET, MODEL_FILES, DeblurModels, build_generator
    from services.deblur.stage import make_deblur
    from services.denoise.app import STAGE as DENOISE
    from services.postprocess.app import STAGE as POSTPROCESS
    from services.upscale.arch.srvgg import SRVGGNetCompact
    from services.upscale.engine import Engine
    from shared.contract import StageContext, validate_params
    from shared.imaging import decode_image, encode_png
    from shared.model_store import ModelStore
    from shared.tiling import process_tiled

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        torch.save({"model": build_generator(MOBILENET).state_dict()}, store.path_for(MODEL_FILES[MOBILENET]))
        deblur = make_deblur(DeblurModels(store))
        colorizer = lightness_network(ECCV16, build_network(ECCV16).eval())
        upscaler = Engine(SRVGGNetCompact(3, 3, num_feat=64, num_conv=32, upscale=4, act_type="prelu").eval(), 4)
        print("\n== connected install's default chain, TIMING ONLY (random weights of the real shapes), "
              "1 MP b/w photo, one process")
        print(f"{'photo':12s}{'upscale':>8s}{'total s':>9s}  per stage (s)")
        for kind in kinds:
            upload = photo_png(1, kind)
            for upscale in ("none", "x2"):
                times = {}
                clock = time.perf_counter()
                picture = decode_image(upload)
                grey = picture.rgb @ np.array([0.299, 0.587, 0.114], np.float32)
                picture = picture.replace(rgb=np.repeat(grey[:, :, None], 3, axis=2))

                def timed(name, fn):
                    nonlocal picture
                    started = time.perf_counter()
                    picture = fn(picture)
                    times[name] = time.perf_counter() - started

                timed("denoise", lambda p: DENOISE.run(p, validate_params(DENOISE.params, {}), StageContext()))
                timed("deblur", lambda p: deblur(p, {"mode": "auto", "model": None, "strength": 1.0},
                                                  StageContext()))
                timed("colorize", lambda p: p.replace(rgb=colorize_array(p.rgb, colorizer)))
                if upscale == "x2":
                    def run_upscale(p):
                        out = process_tiled(p.rgb, upscaler.run_image, scale=4, tile=512, overlap=8, context=16)
                        return p.replace(rgb=np.clip(cv2.resize(out, (p.width * 2, p.height * 2),
                                                                interpolation=cv2.INTER_AREA), 0, 1))
                    timed("upscale", run_upscale)
                for step, pinned in (("post-denoise", {"sharpen_amount": 0.0}), ("sharpen", {"blur_sigma": 0.0})):
                    timed(step, lambda p: POSTPROCESS.run(p, validate_params(POSTPROCESS.params, pinned),
                                                          StageContext()))
                encode_png(picture)
                total = time.perf_counter() - clock
                print(f"{kind:12s}{upscale:>8s}{total:9.1f}  " + ", ".join(f"{n} {t:.2f}" for n, t in times.items()),
                      flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="hops,simple,connected")
    parser.add_argument("--sizes", default="1,2")
    parser.add_argument("--kinds", default="sharp,motion")
    parser.add_argument("--upscales", default="none,x2")
    parser.add_argument("--runs", type=int, default=15, help="rounds of the hops section")
    args = parser.parse_args(argv)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    sections = args.sections.split(",")
    print(f"machine: {machine()}; compare ratios, not absolutes")
    if "hops" in sections:
        hops_section(args.runs)
    if "simple" in sections:
        simple_section([int(s) for s in args.sizes.split(",")], args.kinds.split(","), args.upscales.split(","))
    if "connected" in sections:
        connected_section(args.kinds.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
