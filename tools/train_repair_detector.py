"""Train the repair detector's four small perceptrons and write services/repair/detector_weights.json.

Run: ``python -m tools.train_repair_detector [--out PATH]`` (about 5 minutes on 2 CPU cores; needs torch and,
for its grace_hopper photo, matplotlib: ``pip install matplotlib``; the repair service needs neither).

Data: synthetic damage from tools/damage.py drawn on photos the benchmark (bench/repair.py) does NOT use -
matplotlib's grace_hopper and scikit-image's stereo_motorcycle, retina, immunohistochemistry, moon, coins,
clock, cell, brick, grass and gravel - each also mirrored at 0.75x and transposed at 1.25x, with seeds
7000+i and 8000+i for the first-pass nets and 7500+i and 8500+i for the context nets (the benchmark uses
1000-3000 + i). Every random draw is seeded, so a rerun writes the same file up to floating-point noise.

- First-pass nets (one per polarity): the features of services.repair.detect.pixel_features, one hidden
  layer of 16 ReLUs, on the active pixels only (as detect scores them). Positives: true-mask pixels the
  defect made brighter (bright net) or darker (dark net); negatives: 5% of the undamaged pixels, weighted
  x20 so that the classes keep their real proportions.
- Context nets (one per polarity): the same features plus detect.context_features of the first pass's
  probabilities, same size and sampling.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.repair import detect as det  # noqa: E402
from services.repair.stage import _LUMA  # noqa: E402  (the luminance the stage detects on)
from tools.damage import damage  # noqa: E402

NEGATIVE_SHARE = 0.05
PIXEL_HIDDEN = 16
FIRST_SEEDS = (7000, 8000)
CONTEXT_SEEDS = (7500, 8500)


def training_photos() -> dict[str, np.ndarray]:
    """Photos the benchmark does not use, each also mirrored at 0.75x and transposed at 1.25x."""
    import matplotlib
    import skimage.data as data
    from PIL import Image
    sample_data = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    base = {"grace_hopper": np.asarray(Image.open(sample_data / "grace_hopper.jpg").convert("RGB")),
            "motorcycle": data.stereo_motorcycle()[0],
            "retina": cv2.resize(data.retina(), (560, 560), interpolation=cv2.INTER_AREA),
            "ihc": data.immunohistochemistry()}
    for name in ("moon", "coins", "clock", "cell", "brick", "grass", "gravel"):
        grey = getattr(data, name)()
        base[name] = np.repeat(grey[:, :, None], 3, axis=2)
    base["cell"] = cv2.resize(base["cell"], (440, 528), interpolation=cv2.INTER_AREA)
    photos = {}
    for name, rgb in base.items():
        rgb = np.ascontiguousarray(rgb[:, :, :3])
        photos[name] = rgb
        photos[name + "_mirror075"] = cv2.resize(rgb[:, ::-1], None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
        photos[name + "_transpose125"] = np.ascontiguousarray(
            cv2.resize(rgb, None, fx=1.25, fy=1.25, interpolation=cv2.INTER_CUBIC).transpose(1, 0, 2))
    return photos


def pixel_data(photos: dict[str, np.ndarray], seeds: tuple[int, ...],
               context: bool) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows of active pixels per polarity: first-pass features, plus the context ones when ``context``."""
    rng = np.random.default_rng(seeds[0])
    rows, labels, weights = {1: [], -1: []}, {1: [], -1: []}, {1: [], -1: []}
    for index, (name, clean) in enumerate(photos.items()):
        for base_seed in seeds:
            damaged, truth = damage(clean, seed=base_seed + index)
            luma = damaged.astype(np.float32) @ _LUMA
            change = luma - clean.astype(np.float32) @ _LUMA
            if context:
                maps, active, first = det.first_pass(luma)
            else:
                maps, active = {}, {}
                for sign, (sign_maps, sign_active) in det.pixel_features(luma).items():
                    maps[sign], active[sign] = sign_maps, sign_active
            negatives = ~truth & (rng.random(truth.shape) < NEGATIVE_SHARE)
            for sign in (1, -1):
                sign_maps = maps[sign] + (det.context_features(first[sign], first[-sign]) if context else [])
                positives = truth & (sign * change > 0)
                pick = (positives | negatives) & active[sign]
                rows[sign].append(np.stack([m[pick] for m in sign_maps], axis=1))
                labels[sign].append(positives[pick])
                weights[sign].append(np.where(positives[pick], 1.0, 1 / NEGATIVE_SHARE))
        print(f"pixels{' (context)' if context else ''}: {name}", flush=True)
    return {sign: (np.concatenate(rows[sign]), np.concatenate(labels[sign]), np.concatenate(weights[sign]))
            for sign in (1, -1)}


def fit(rows: np.ndarray, labels: np.ndarray, weights: np.ndarray, hidden: int, steps: int,
        batch: int | None) -> dict:
    import torch
    torch.manual_seed(0)
    x = torch.tensor(rows, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.float32)
    w = torch.tensor(weights, dtype=torch.float32)
    mean, scale = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / scale
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        pick = torch.randint(0, len(x), (batch,), generator=generator) if batch else slice(None)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(net(x[pick]).squeeze(1), y[pick],
                                                                     reduction="none") * w[pick]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    print(f"  loss {loss.item():.4f} on {len(x)} rows, {int(y.sum())} positive", flush=True)
    first, second = net[0], net[2]
    return {"mean": mean.tolist(), "scale": scale.tolist(), "w1": first.weight.detach().tolist(),
            "b1": first.bias.detach().tolist(), "w2": second.weight.detach()[0].tolist(),
            "b2": float(second.bias.detach()[0])}


def pixel_nets(photos: dict[str, np.ndarray]) -> dict:
    nets = {}
    for sign, (rows, labels, weights) in pixel_data(photos, FIRST_SEEDS, context=False).items():
        print(f"pixel net {det._NAMES[sign]}", flush=True)
        nets[det._NAMES[sign]] = fit(rows, labels, weights, hidden=PIXEL_HIDDEN, steps=1500, batch=65536)
    # each later stage's inputs depend on the nets trained before it
    det._NETS = det.prepare_nets(nets)
    for sign, (rows, labels, weights) in pixel_data(photos, CONTEXT_SEEDS, context=True).items():
        print(f"context net {det._NAMES[sign]}", flush=True)
        nets["context_" + det._NAMES[sign]] = fit(rows, labels, weights, hidden=PIXEL_HIDDEN, steps=1500,
                                                  batch=65536)
    return nets


def main() -> int:
    torch_threads = os.environ.get("TRAIN_THREADS")
    if torch_threads:
        import torch
        torch.set_num_threads(int(torch_threads))
    photos = training_photos()
    nets = pixel_nets(photos)
    out = {"about": "repair detector perceptrons; trained by tools/train_repair_detector.py on photos and "
                    "damage seeds the benchmark does not use",
           "pixel_features": list(det.PIXEL_FEATURES), "context_features": list(det.CONTEXT_FEATURES),
           "training_photos": sorted(photos), "nets": nets}
    target = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else det.WEIGHTS_PATH
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
