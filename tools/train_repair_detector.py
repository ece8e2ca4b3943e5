"""Train the repair detector's ensemble of small perceptrons and write services/repair/detector_weights.json.

Run: ``python -m tools.train_repair_detector [--out PATH] [--member base|wide]`` (about 15 minutes for both
members on 2 CPU cores; ``--member`` retrains one and keeps the other; needs torch and, for its grace_hopper
photo, matplotlib: ``pip install matplotlib``; the repair service needs neither).

Data: synthetic damage from tools/damage.py drawn on photos the benchmark (bench/repair.py) does NOT use -
matplotlib's grace_hopper and scikit-image's stereo_motorcycle, retina, immunohistochemistry, moon, coins,
clock, cell, brick, grass and gravel - each also mirrored at 0.75x and transposed at 1.25x. The benchmark
uses damage seeds 1000-3000 + i; the members (MEMBERS) use others:

- ``base``: the first 17 pixel and 7 context features, 16 hidden units, seeds 7000+i and 8000+i for the
  first-pass nets and 7500+i and 8500+i for the context nets;
- ``wide``: all the features, 24 hidden units, the photos also flipped at 0.5x (small photos), seeds
  7000+i, 8000+i, 9000+i and 9800+i (first pass) and 7500+i, 8500+i, 9500+i and 9900+i (context), the
  98xx and 99xx draws with two creases each.

Every random draw is seeded, so a rerun writes the same file up to floating-point noise.

- First-pass nets (one per polarity): the features of services.repair.detect.pixel_features, one hidden
  layer of ReLUs, on the active pixels only (as detect scores them). Positives: true-mask pixels the
  defect made brighter (bright net) or darker (dark net); negatives: 5% of the undamaged pixels, weighted
  x20 so that the classes keep their real proportions.
- Context nets (one per polarity): the same features plus detect.context_features of the member's own
  first-pass probabilities, same size and sampling.
"""
from __future__ import annotations

import argparse
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
# a random draw has one crease at most: these seeds draw two, with fewer other defects
CREASE_DRAWS = {9800: dict(scratches=1, creases=2, dust=10), 9900: dict(scratches=1, creases=2, dust=10)}
# the ensemble's members: how many of the leading PIXEL_FEATURES / CONTEXT_FEATURES each uses, its hidden
# units, training steps, damage seeds (first pass; context) and whether the photos come at 0.5x too
MEMBERS = {
    "base": dict(pixel_features=17, context_features=7, hidden=16, steps=1500, first_seeds=(7000, 8000),
                 context_seeds=(7500, 8500), small=False),
    "wide": dict(pixel_features=19, context_features=8, hidden=24, steps=2000, first_seeds=(7000, 8000, 9000, 9800),
                 context_seeds=(7500, 8500, 9500, 9900), small=True),
}


def training_photos(small: bool) -> dict[str, np.ndarray]:
    """Photos the benchmark does not use, each also mirrored at 0.75x and transposed at 1.25x (and flipped at
    0.5x when ``small``)."""
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
        if small:      # the same defects cover more of a small photo, and its texture is finer
            photos[name + "_flip050"] = cv2.resize(rgb[::-1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return photos


def pixel_data(photos: dict[str, np.ndarray], seeds: tuple[int, ...], config: dict,
               member: dict | None) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows of active pixels per polarity: first-pass features, plus the context ones of ``member``'s first
    pass when it is given."""
    rng = np.random.default_rng(seeds[0])
    rows, labels, weights = {1: [], -1: []}, {1: [], -1: []}, {1: [], -1: []}
    for index, (name, clean) in enumerate(photos.items()):
        for base_seed in seeds:
            damaged, truth = damage(clean, seed=base_seed + index, **CREASE_DRAWS.get(base_seed, {}))
            luma = damaged.astype(np.float32) @ _LUMA
            change = luma - clean.astype(np.float32) @ _LUMA
            maps, active = {}, {}
            for sign, (sign_maps, sign_active) in det.pixel_features(luma).items():
                maps[sign], active[sign] = sign_maps, sign_active
            context = det.context_features(det.first_pass(member, maps, active)) if member else {1: [], -1: []}
            negatives = ~truth & (rng.random(truth.shape) < NEGATIVE_SHARE)
            for sign in (1, -1):
                sign_maps = maps[sign][:config["pixel_features"]] + context[sign][:config["context_features"]]
                positives = truth & (sign * change > 0)
                pick = (positives | negatives) & active[sign]
                rows[sign].append(np.stack([m[pick] for m in sign_maps], axis=1))
                labels[sign].append(positives[pick])
                weights[sign].append(np.where(positives[pick], 1.0, 1 / NEGATIVE_SHARE))
        print(f"pixels{' (context)' if member else ''}: {name}", flush=True)
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


def train_member(config: dict) -> dict:
    """One member's four nets (first pass and context, per polarity), in the weights file's form."""
    photos = training_photos(config["small"])
    nets = {}
    for sign, (rows, labels, weights) in pixel_data(photos, config["first_seeds"], config, None).items():
        print(f"pixel net {det._NAMES[sign]}", flush=True)
        nets[det._NAMES[sign]] = fit(rows, labels, weights, config["hidden"], config["steps"], batch=65536)
    # the context nets' inputs depend on the first-pass nets trained before them
    member = {"pixel_features": config["pixel_features"], "context_features": config["context_features"],
              "nets": det.prepare_nets(nets)}
    for sign, (rows, labels, weights) in pixel_data(photos, config["context_seeds"], config, member).items():
        print(f"context net {det._NAMES[sign]}", flush=True)
        nets["context_" + det._NAMES[sign]] = fit(rows, labels, weights, config["hidden"], config["steps"],
                                                  batch=65536)
    return {"pixel_features": list(det.PIXEL_FEATURES[:config["pixel_features"]]),
            "context_features": list(det.CONTEXT_FEATURES[:config["context_features"]]),
            "training_photos": sorted(photos), "nets": nets}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=det.WEIGHTS_PATH)
    parser.add_argument("--member", choices=sorted(MEMBERS), help="retrain only this member, keep the others")
    args = parser.parse_args()
    torch_threads = os.environ.get("TRAIN_THREADS")
    if torch_threads:
        import torch
        torch.set_num_threads(int(torch_threads))
    kept = {}
    if args.member and args.out.exists():
        kept = {m["name"]: m for m in json.loads(args.out.read_text())["members"]}
    members = []
    for name, config in MEMBERS.items():
        member = kept[name] if args.member and name != args.member else {"name": name, **train_member(config)}
        members.append(member)
    out = {"about": "repair detector: an ensemble of perceptron sets, trained by tools/train_repair_detector.py on "
                    "photos and damage seeds the benchmark does not use", "members": members}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
