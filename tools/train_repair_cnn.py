"""Train the repair detector's convolutional refiner and write services/repair/detector_cnn.onnx.

Run (the served net: 5 minutes of training on one H100, after a minute drawing the data on 16 cores;
on 2 CPU cores use far fewer --draws and expect a weaker net):

    python -m tools.train_repair_cnn --save-photos /tmp/repair_photos.npz      # the photos, once (needs
        # matplotlib, scikit-learn, scikit-image and ../shared/images)
    python tools/train_repair_cnn.py --photos /tmp/repair_photos.npz --out-dir /tmp/cnn --workers 16 \\
        --draws 80 --old-draws 150 --seconds 300
    python -m tools.train_repair_cnn --export /tmp/cnn/a24.npz                 # -> detector_cnn.onnx

Training needs torch (and onnx for the export); the repair service needs neither: it runs the ONNX file with
OpenCV's dnn module.

The refiner (services.repair.detect.cnn_correction) sees the luma and the perceptron ensemble's bright and
dark probabilities and adds a log-odds correction to each: a fully-convolutional net of 3x3 convolutions
with growing dilations (a reach of sum(dilations) px each way) and a 1x1 head. Its last layer starts at
zero, so training starts from the ensemble as it is. Several VARIANTS (sizes, losses) train side by side on
the same batches; the one served was chosen on the dev seeds (tools/repair_tune.py), never the benchmark's.

Data: synthetic damage from tools/damage.py drawn on photos the benchmark (bench/repair.py) does NOT use -
matplotlib's grace_hopper, Minduka and logo2, scikit-learn's china and flower, scikit-image's
stereo_motorcycle, retina, immunohistochemistry, hubble_deep_field, colorwheel, logo, moon, coins, clock,
cell, brick, grass, gravel, page, text, horse, shepp_logan_phantom, binary_blobs, checkerboard and
microaneurysms - each drawn --draws times with a random scale (0.5x-1.5x), flip or transpose, brightness /
contrast / gamma, grey or colour and, half the time, a JPEG re-compression (quality 50-95), all before the
damage; one draw in CLEAN_SHARE has no damage (false alarms), one in eight two creases. Besides them the
scanned old photos of ../shared/images (where recall is weakest), always damaged (so that their clean false
alarms stay a fair measure), with damage seeds from OLD_SEED_BASE on. Damage seeds are SEED_BASE + n and
OLD_SEED_BASE + n (the benchmark uses 1000-3999, the tuning 7000-8999). scikit-image's benchmark photos
(astronaut, coffee, chelsea, camera, rocket) stay out of all training. Every random draw is seeded.

Training: random CROP-px crops (a share centred on a pixel the ensemble finds likely, where its mistakes
are, a share on a true defect pixel, where its misses are, the rest anywhere; OLD_SHARE of them from the old
photos), randomly flipped and transposed; the loss is scored on the crop's middle only (its rim lacks the
context the net sees at serving): per-pixel binary cross-entropy of the corrected log-odds against the
true mask of each polarity (pixels the defect made brighter / darker), with a weight on the defect pixels
and optionally a soft Dice term (defects are 1-2% of the pixels). AdamW with a one-cycle learning rate,
bf16 autocast on CUDA.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.repair import detect as det  # noqa: E402
from services.repair.stage import _LUMA as LUMA  # noqa: E402
from tools.damage import damage  # noqa: E402

SEED_BASE = 10000
OLD_SEED_BASE = 20000
CLEAN_SHARE = 0.15
OLD_PHOTOS = ("children-alpha.png", "gray-00017.png", "ost-009.png", "small-0014.jpg", "tree-alpha-16bit.png",
              "wolf-gray.jpg")
OLD_SHARE = 0.35            # share of the crops from the old photos
CROP = 192
MARGIN = 24                 # px of each crop's rim left out of the loss
CLIP = det.CNN_CLIP         # the served log-odds clip
LIKELY_BAR = 0.2            # the ensemble finds a pixel "likely" above it (the crop centres where its mistakes are)

# name: (channels, dilations, positive weight, dice weight)
VARIANTS = {
    "a24": (24, (1, 2, 4, 8, 16, 32, 1), 1.0, 0.0),
    "b24": (24, (1, 2, 4, 8, 16, 32, 1), 3.0, 0.5),
    "c16": (16, (1, 2, 4, 8, 16, 1), 1.0, 0.0),
    "d24": (24, (1, 2, 4, 8, 16, 1), 2.0, 0.0),
}


# ----------------------------------------------------------------------------------------------- photos

def base_photos() -> dict[str, np.ndarray]:
    """uint8 RGB photos the benchmark does not use."""
    import matplotlib
    import skimage.data as data
    from PIL import Image
    from sklearn.datasets import load_sample_images
    sample_data = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"

    def rgb(image) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype == bool:     # a binary drawing: soften its edges as a scan would
            image = cv2.GaussianBlur(image.astype(np.float32) * 255, (0, 0), 0.8)
        elif image.dtype != np.uint8:
            image = image.astype(np.float32) * (255 / max(1e-6, float(image.max())))
        image = np.clip(image, 0, 255).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.shape[2] == 4:     # over white
            alpha = image[:, :, 3:4].astype(np.float32) / 255
            image = (image[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        return np.ascontiguousarray(image[:, :, :3])

    photos = {"grace_hopper": Image.open(sample_data / "grace_hopper.jpg").convert("RGB"),
              "minduka": Image.open(sample_data / "Minduka_Present_Blue_Pack.png").convert("RGB"),
              "logo2": Image.open(sample_data / "logo2.png").convert("RGBA")}
    sample = load_sample_images()
    photos.update({"china": sample.images[0], "flower": sample.images[1]})
    for name in ("immunohistochemistry", "hubble_deep_field", "colorwheel", "logo", "moon", "coins", "clock",
                 "cell", "brick", "grass", "gravel", "page", "text", "horse", "shepp_logan_phantom",
                 "binary_blobs", "checkerboard"):
        photos[name] = getattr(data, name)()
    photos["microaneurysms"] = cv2.resize(data.microaneurysms(), (306, 306), interpolation=cv2.INTER_CUBIC)
    photos["motorcycle"] = data.stereo_motorcycle()[0]
    photos["retina"] = cv2.resize(data.retina(), (700, 700), interpolation=cv2.INTER_AREA)
    photos["hubble_deep_field"] = cv2.resize(photos["hubble_deep_field"], (750, 654), interpolation=cv2.INTER_AREA)
    return {name: rgb(image) for name, image in photos.items()}


def old_photos() -> dict[str, np.ndarray]:
    """The scanned old photos of ../shared/images, as the benchmark reads them."""
    from bench.repair import load_photos
    return {name: rgb for name, rgb in load_photos(True).items() if name in OLD_PHOTOS}


def save_photos(path: Path) -> None:
    arrays = {f"base__{name}": rgb for name, rgb in base_photos().items()}
    arrays.update({f"old__{name}": rgb for name, rgb in old_photos().items()})
    np.savez_compressed(path, **arrays)


def load_photo_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    base, old = {}, {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            kind, name = key.split("__", 1)
            (base if kind == "base" else old)[name] = data[key]
    return base, old


# ------------------------------------------------------------------------------------------------ drawing

def augment(rgb: np.ndarray, rng: np.random.Generator, scale_range=(0.5, 1.5)) -> np.ndarray:
    """A random variant of a clean photo: scale, orientation, tone, grey or colour, JPEG re-compression."""
    scale = float(np.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1]))))
    size = (max(64, round(rgb.shape[1] * scale)), max(64, round(rgb.shape[0] * scale)))
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    if rng.random() < 0.5:
        out = out.transpose(1, 0, 2)
    tone = out.astype(np.float32) / 255
    tone = tone ** float(np.exp(rng.uniform(-0.4, 0.4)))
    tone = (tone - 0.5) * rng.uniform(0.6, 1.2) + 0.5 + rng.uniform(-0.15, 0.15)
    out = np.clip(tone * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = np.repeat((out.astype(np.float32) @ LUMA + 0.5).astype(np.uint8)[:, :, None], 3, axis=2)
    if rng.random() < 0.5:
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
        out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(out)


def draw_one(job: tuple) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, bool]:
    """One damaged variant: (key, luma uint8, ensemble p 2 x H x W float16, label 2 x H x W uint8, old)."""
    cv2.setNumThreads(1)
    key, clean_base, seed, old = job
    rng = np.random.default_rng(seed)
    clean = augment(clean_base, rng, (0.7, 1.3) if old else (0.5, 1.5))
    roll = rng.random()
    if not old and roll < CLEAN_SHARE:
        damaged, truth = clean, np.zeros(clean.shape[:2], bool)
    elif roll < CLEAN_SHARE + 0.125:
        damaged, truth = damage(clean, seed=seed, scratches=1, creases=2, dust=10)
    else:
        damaged, truth = damage(clean, seed=seed)
    luma = damaged.astype(np.float32) @ LUMA
    change = luma - clean.astype(np.float32) @ LUMA
    ensemble = det.ensemble_probabilities(luma)
    # per polarity: 1 damage of that polarity, 0 none, 2 damage that barely changed the luma (ignored)
    label = np.zeros((2,) + truth.shape, np.uint8)
    label[0][truth & (change > 0)] = 1
    label[1][truth & (change < 0)] = 1
    label[:, truth & (change == 0)] = 2
    return (key, np.clip(luma + 0.5, 0, 255).astype(np.uint8),
            np.stack([ensemble[1], ensemble[-1]]).astype(np.float16), label, old)


def draw_all(base: dict, old: dict, draws: int, old_draws: int, workers: int) -> list:
    jobs = [(f"{name}_{d}", rgb, SEED_BASE + i * 100 + d, False) for i, (name, rgb) in enumerate(base.items())
            for d in range(draws)]
    jobs += [(f"{name}_{d}", rgb, OLD_SEED_BASE + i * 100 + d, True) for i, (name, rgb) in enumerate(old.items())
             for d in range(old_draws)]
    started = time.perf_counter()
    if workers <= 1:
        samples = [draw_one(job) for job in jobs]
    else:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            samples = pool.map(draw_one, jobs, chunksize=1)
    pixels = sum(s[1].size for s in samples)
    print(f"drew {len(samples)} photos, {pixels / 1e6:.0f} MP ({time.perf_counter() - started:.0f} s)", flush=True)
    return samples


# ----------------------------------------------------------------------------------------------- training

def build_net(channels: int, dilations: tuple[int, ...]):
    import torch
    layers, inputs = [], 3
    for dilation in dilations:
        layers += [torch.nn.Conv2d(inputs, channels, 3, padding=dilation, dilation=dilation), torch.nn.ReLU()]
        inputs = channels
    head = torch.nn.Conv2d(inputs, 2, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return torch.nn.Sequential(*layers, head)


def planes_of(luma8: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The served refiner input (``cnn_input``) of a crop: its 8-bit luma and bright/dark probabilities."""
    return det.cnn_input(luma8.astype(np.float32), {1: p[0], -1: p[1]})[0]


class Crops:
    def __init__(self, samples: list, rng: np.random.Generator):
        self.rng = rng
        self.items = []
        for key, luma8, p, label, old in samples:
            likely = np.flatnonzero(p.max(axis=0) > np.float16(LIKELY_BAR))
            truth = np.flatnonzero((label == 1).any(axis=0))
            self.items.append((luma8, p, label, likely, truth, old))
        self.old = [i for i, item in enumerate(self.items) if item[5]]
        self.base = [i for i, item in enumerate(self.items) if not item[5]]

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        rng, half = self.rng, CROP // 2
        xs = np.zeros((size, 3, CROP, CROP), np.float32)
        ys = np.full((size, 2, CROP, CROP), 2, np.uint8)
        for b in range(size):
            pool = self.old if self.old and (not self.base or rng.random() < OLD_SHARE) else self.base
            luma8, p, label, likely, truth, _ = self.items[pool[int(rng.integers(len(pool)))]]
            height, width = luma8.shape
            roll = rng.random()
            if roll < 0.4 and len(likely):
                flat = likely[int(rng.integers(len(likely)))]
            elif roll < 0.65 and len(truth):
                flat = truth[int(rng.integers(len(truth)))]
            else:
                flat = int(rng.integers(height * width))
            cy, cx = divmod(int(flat), width)
            cy += int(rng.integers(-half // 2, half // 2 + 1))
            cx += int(rng.integers(-half // 2, half // 2 + 1))
            # crops past the photo's edge are zero-padded, as the net's own padding is; their label is ignored
            top, left = cy - half, cx - half
            t0, l0 = max(0, top), max(0, left)
            t1, l1 = min(height, top + CROP), min(width, left + CROP)
            if t1 <= t0 or l1 <= l0:
                continue
            xs[b, :, t0 - top:t1 - top, l0 - left:l1 - left] = planes_of(luma8[t0:t1, l0:l1], p[:, t0:t1, l0:l1])
            ys[b, :, t0 - top:t1 - top, l0 - left:l1 - left] = label[:, t0:t1, l0:l1]
            if rng.random() < 0.5:
                xs[b], ys[b] = xs[b, :, :, ::-1], ys[b, :, :, ::-1]
            if rng.random() < 0.5:
                xs[b], ys[b] = xs[b, :, ::-1], ys[b, :, ::-1]
            if rng.random() < 0.5:
                xs[b], ys[b] = xs[b].transpose(0, 2, 1), ys[b].transpose(0, 2, 1)
        return xs, ys


def losses(torch, correction, x, y, pos_weight: float, dice: float):
    """The loss of the served log-odds (ensemble + correction) on the crops' middles."""
    inner = slice(MARGIN, CROP - MARGIN)
    p = x[:, 1:3].clamp(CLIP, 1 - CLIP)
    logits = (correction.float() + torch.log(p / (1 - p)))[:, :, inner, inner]
    target = y[:, :, inner, inner]
    weight = (target != 2).float()
    positive = (target == 1).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, positive, reduction="none")
    bce = (bce * weight * (1 + (pos_weight - 1) * positive)).sum() / weight.sum()
    if dice <= 0:
        return bce
    prob = torch.sigmoid(logits) * weight
    overlap = (prob * positive).sum()
    soft_dice = 1 - (2 * overlap + 1) / (prob.sum() + positive.sum() + 1)
    return bce + dice * soft_dice


def train(samples: list, variants: dict, seconds: float, batch: int, lr: float, out_dir: Path, device: str,
          log_every: int = 200) -> None:
    """Train every variant on the same batches for ``seconds`` of wall time (warm-up, then a cosine decay of
    the learning rate over that time: the run ends on time whatever the machine's speed)."""
    import torch
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    rng = np.random.default_rng(SEED_BASE)
    order = rng.permutation(len(samples))
    held = max(1, len(samples) // 25)
    val = Crops([samples[i] for i in order[:held]], np.random.default_rng(1))
    crops = Crops([samples[i] for i in order[held:]], rng)
    val_batches = [val.batch(batch) for _ in range(8)]
    nets, optimisers = {}, {}
    for name, (channels, dilations, _, _) in variants.items():
        net = build_net(channels, dilations).to(device).to(memory_format=torch.channels_last)
        nets[name] = net
        optimisers[name] = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu",
                                                                                                  enabled=False)
    # a background thread cuts the crops while the GPU trains
    import queue
    import threading
    ready: queue.Queue = queue.Queue(maxsize=6)

    def producer():
        while True:
            ready.put(crops.batch(batch))
    threading.Thread(target=producer, daemon=True).start()
    started = time.perf_counter()
    running = {name: None for name in variants}

    def to_device(x, y):
        return (torch.from_numpy(x).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last),
                torch.from_numpy(y.astype(np.int64)).to(device, non_blocking=True))

    step, last = 0, False
    while not last:
        frac = (time.perf_counter() - started) / seconds
        last = frac >= 1
        rate = lr * min(1.0, frac / 0.05) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
        x, y = to_device(*ready.get())
        for name, (_, _, pos_weight, dice) in variants.items():
            with autocast:
                correction = nets[name](x)
            loss = losses(torch, correction, x, y, pos_weight, dice)
            optimisers[name].zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(nets[name].parameters(), 1.0)
            for group in optimisers[name].param_groups:
                group["lr"] = max(rate, lr * 1e-3)
            optimisers[name].step()
            value = loss.item() if step % 10 == 0 or last else None
            if value is not None:
                running[name] = value if running[name] is None else 0.9 * running[name] + 0.1 * value
        step += 1
        if step % log_every == 1 or last:
            report = []
            with torch.no_grad():
                for name, (_, _, pos_weight, dice) in variants.items():
                    total = 0.0
                    for vx, vy in val_batches:
                        vx, vy = to_device(vx, vy)
                        with autocast:
                            correction = nets[name](vx)
                        total += losses(torch, correction, vx, vy, 1.0, 0.0).item()
                    report.append(f"{name} {running[name]:.4f}/val-bce {total / len(val_batches):.4f}")
            print(f"step {step} " + "  ".join(report) + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (channels, dilations, _, _) in variants.items():
        weights = {f"p{i:02d}": param.detach().float().cpu().numpy() for i, param in enumerate(nets[name].parameters())}
        np.savez(out_dir / f"{name}.npz", channels=np.int64(channels), dilations=np.asarray(dilations, np.int64),
                 **weights)
        print(f"wrote {out_dir / f'{name}.npz'}", flush=True)


# ------------------------------------------------------------------------------------------------- export

def load_npz(path: Path):
    """The net stored by train() (plain arrays, no pickle), as a torch module."""
    import torch
    with np.load(path, allow_pickle=False) as data:
        net = build_net(int(data["channels"]), tuple(int(d) for d in data["dilations"]))
        keys = sorted(k for k in data.files if k.startswith("p"))
        with torch.no_grad():
            for param, key in zip(net.parameters(), keys, strict=True):
                param.copy_(torch.from_numpy(data[key]))
    return net.eval()


def export(net, out: Path) -> None:
    import torch
    torch.onnx.export(net, torch.zeros(1, 3, 64, 64), str(out), input_names=["planes"], output_names=["correction"],
                      dynamic_axes={"planes": {2: "height", 3: "width"}, "correction": {2: "height", 3: "width"}},
                      opset_version=13, dynamo=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--save-photos", type=Path, help="write the training photos to this npz and stop")
    parser.add_argument("--photos", type=Path, help="the photos written by --save-photos")
    parser.add_argument("--export", type=Path, help="write the net of this npz (from training) as ONNX and stop")
    parser.add_argument("--onnx", type=Path, default=ROOT / "services" / "repair" / "detector_cnn.onnx")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/repair_cnn"))
    parser.add_argument("--draws", type=int, default=60)
    parser.add_argument("--old-draws", type=int, default=60)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=300, help="training time (wall)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--limit-photos", type=int, default=0, help="only the first N photos of each set (a smoke test)")
    args = parser.parse_args()
    if args.save_photos:
        save_photos(args.save_photos)
        return 0
    if args.export:
        export(load_npz(args.export), args.onnx)
        print(f"wrote {args.onnx}")
        return 0
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(2)
    base, old = load_photo_file(args.photos) if args.photos else (base_photos(), old_photos())
    if args.limit_photos:
        base = dict(list(base.items())[:args.limit_photos])
        old = dict(list(old.items())[:args.limit_photos])
    samples = draw_all(base, old, args.draws, args.old_draws, args.workers)
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    train(samples, variants, args.seconds, args.batch, args.lr, args.out_dir, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
