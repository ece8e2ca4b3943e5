"""Finding print damage: thin elongated defects (scratches, creases, hairs) and small blobs (dust, spots).

Works on the luminance in 8-bit units, once per polarity (bright defects: scraped emulsion, crease ridges,
dust on the print; dark ones: dirt in a groove, crease shadows, dust on the negative), in three steps:

1. Pixels. Each pixel gets hand-crafted features (``pixel_features``): morphological top-hats with discs of
   5, 9 and 15 px (structures narrower than that, with their contrast against the local background), the
   difference to 5x5 and 11x11 medians, line openings of the thickened top-hat with 21- and 41-px segments
   in 8 directions (the max: something long in some direction; the min: long in all, a patch rather than a
   line), Hessian eigenvalues at sigma 1 and 2 (ridge across, flat along), the local texture level (median
   top-hat in 16x16 blocks, median line response in 32x32 blocks, 15x15 standard deviation), the pixel's
   tone in the defect's polarity, the edge sharpness around it in 3x3 and 7x7 windows (defects lie on the
   print, unblurred by the lens; the wider window reaches a speck's edge from its middle) and the opposite
   polarity's top-hat close by (a crease's ridge beside its shadow). A small perceptron (one hidden layer) turns them into a probability of damage. Pixels less
   than ``ACTIVE_CONTRAST`` off their top-hat background are not scored (probability 0).
2. Context. A second perceptron per polarity sees the same features plus how the first probabilities are
   laid out around the pixel (``context_features``): their line openings (a scratch is a long coherent run
   of likely pixels, texture a scatter of short ones), their local mean and max, and the opposite
   polarity's max and line opening close by (a crease is a bright ridge beside a dark shadow line). The
   polarities are kept apart. Steps 1 and 2 run for each member of a small ensemble (members trained on
   different draws, with different feature sets and sizes: each uses the leading features of the lists);
   their probabilities are averaged per polarity, since they agree on damage more than on the texture each
   mistakes for it.
2b. Refiner. A small fully-convolutional net (``cnn_correction``: seven 3x3 convolutions of 24 channels with
   dilations 1-32, a reach of 64 px each way, and a 1x1 head; about 31,000 weights) sees the luma and the
   ensemble's bright and dark probabilities and adds a log-odds correction to each polarity's: it sees the
   photo itself over a wider area than the features do, and so can tell a defect crossing busy texture from
   the texture, or a branch from a scratch, and carry a defect's likelihood along its whole length. It runs
   in OpenCV's dnn module from ``detector_cnn.onnx`` (no torch at serving), in strips of rows with a halo
   of its reach, so that its memory stays small on large photos. The polarities are then merged by the max.
3. Components. Pixels above ``PIXEL_BAR`` are joined into 8-connected components. A component is damage
   when its pixels' mean probability is above ``MEAN_BAR`` (a defect is likely all along; a fragment of
   texture or an object edge has a few likely pixels in a long fringe of doubtful ones), its most likely
   pixel above ``PEAK_BAR`` and its area at least ``MIN_AREA``.

The perceptrons are trained by ``tools/train_repair_detector.py`` on synthetic damage (tools/damage.py)
drawn on photos and seeds that the benchmark does not use; their parameters (about 2,600 numbers) are plain
numbers in ``detector_weights.json``, evaluated here with numpy. The refiner is trained by
``tools/train_repair_cnn.py`` (on a GPU: 4 minutes on one H100) on the ensemble's output for synthetic damage
drawn on photos other than the benchmark's (randomly scaled, flipped, toned, JPEG re-compressed; some left
clean) and on the old scans of ../shared/images (damage seeds from 10000 and 20000 on; the benchmark uses
1000-3999). The bars of step 3 were set on damage seeds the benchmark does not use (7000+i and 8000+i,
tools/repair_tune.py); with the refiner, a higher pixel bar splits a defect from the doubtful fringe the
ensemble leaves around texture.

The sensitivity moves the mean bar in log-odds (``SENSITIVITY_LOGODDS`` per 0.5 of sensitivity);
``mode=force`` repairs components down to ``CANDIDATE_SHIFT`` log-odds below it. Components longer than
``LINE_EXTENT`` count as lines (scratches, creases, hairs), the others as specks (dust, spots); the kinds
params keep one or both.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

WEIGHTS_PATH = Path(__file__).with_name("detector_weights.json")
CNN_PATH = Path(__file__).with_name("detector_cnn.onnx")
CNN_STRIP = 512            # rows per pass of the refiner: bounds its hidden maps' memory on large photos (the halo costs 25%)
CNN_DILATIONS = (1, 2, 4, 8, 16, 32, 1)   # the refiner's 3x3 convolutions (checked against the ONNX file by a test)
CNN_HALO = sum(CNN_DILATIONS)  # rows of context above and below a strip: the refiner's reach
CNN_CLIP = 1e-3            # the ensemble's probabilities are clipped to [CLIP, 1 - CLIP] before their log-odds
PIXEL_BAR = 0.45           # probability: a pixel joins a candidate component above it
MEAN_BAR = 0.87            # probability: a component is damage when its pixels' mean is above it ...
PEAK_BAR = 0.85            # ... and its most likely pixel above this
MIN_AREA = 5               # px: smaller components are noise (a speck of 1 px radius covers 5)
LINE_EXTENT = 25.0         # px: a component with a longer bounding-box diagonal is a line, else a speck
SENSITIVITY_LOGODDS = 2.0  # log-odds the mean bar moves per 0.5 of sensitivity
CANDIDATE_SHIFT = 1.0      # log-odds: force mode also repairs components this far below the bar
LEVEL_BLOCK = 16
LINE_LEVEL_BLOCK = 32
PIXEL_CHUNK = 1 << 18      # pixels per perceptron batch: bounds the hidden layer's memory on large photos
ACTIVE_CONTRAST = 6.0      # 8-bit levels: a pixel less than this off its 15-px top-hat background is no defect


@dataclass
class Detection:
    mask: np.ndarray                                  # bool H x W: the defects to repair
    candidates: np.ndarray                            # bool H x W: everything above the candidate bar
    counts: dict[str, int] = field(default_factory=dict)


def _line_kernels(length: int, angles: int = 8) -> list[np.ndarray]:
    kernels = []
    half = length // 2
    for index in range(angles):
        angle = math.pi * index / angles
        kernel = np.zeros((length, length), np.uint8)
        dx, dy = math.cos(angle) * half, math.sin(angle) * half
        cv2.line(kernel, (round(half - dx), round(half - dy)), (round(half + dx), round(half + dy)), 1, 1)
        kernels.append(kernel)
    return kernels


def _disc(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


_LINES21 = _line_kernels(21)
_LINES41 = _line_kernels(41)
_DISCS = (_disc(5), _disc(9), _disc(15))
_SQUARE3 = np.ones((3, 3), np.uint8)
_SQUARE5 = np.ones((5, 5), np.uint8)
_SQUARE7 = np.ones((7, 7), np.uint8)

PIXEL_FEATURES = ("tophat5", "tophat9", "tophat15", "line21", "line21_least", "median11", "median5",
                  "ridge1", "along1", "ridge2", "along2", "texture", "line_texture", "std15", "tone",
                  "line41", "sharpness", "sharpness7", "opposite9")
CONTEXT_FEATURES = ("p", "p_along21", "p_along21_least", "p_along41", "p_mean9", "p_max5", "other_p_max5",
                    "other_along21_max5")


def block_level(values: np.ndarray, block: int) -> np.ndarray:
    """Median of ``values`` in blocks, interpolated: a local level that thin defects do not raise."""
    height, width = values.shape
    if height < block or width < block:      # a photo smaller than one block: one level for all of it
        return np.full(values.shape, np.median(values), np.float32)
    rows, cols = height // block, width // block
    blocks = values[:rows * block, :cols * block].reshape(rows, block, cols, block)
    flat = blocks.transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    rank = (flat.shape[2] - 1) // 2
    level = np.partition(flat, rank, axis=2)[:, :, rank].astype(np.float32)
    return cv2.resize(level, (width, height), interpolation=cv2.INTER_LINEAR)


def _hessian(luma: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale-normalised Hessian eigenvalues (smaller, larger) of the Gaussian-smoothed luma."""
    smooth = cv2.GaussianBlur(luma, (0, 0), sigma)
    dxx = cv2.Sobel(smooth, cv2.CV_32F, 2, 0, ksize=3)
    dyy = cv2.Sobel(smooth, cv2.CV_32F, 0, 2, ksize=3)
    dxy = cv2.Sobel(smooth, cv2.CV_32F, 1, 1, ksize=3)
    mean = (dxx + dyy) / 2
    spread = np.sqrt(((dxx - dyy) / 2) ** 2 + dxy ** 2)
    return (mean - spread) * sigma ** 2, (mean + spread) * sigma ** 2


def _max_opening(values: np.ndarray, kernels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Max and min over directions of the openings with line segments."""
    most = cv2.morphologyEx(values, cv2.MORPH_OPEN, kernels[0])
    least = most.copy()
    for kernel in kernels[1:]:
        opened = cv2.morphologyEx(values, cv2.MORPH_OPEN, kernel)
        np.maximum(most, opened, out=most)
        np.minimum(least, opened, out=least)
    return most, least


def _log(values: np.ndarray) -> np.ndarray:
    """log1p of the positive part, in half precision (feature maps)."""
    return np.log1p(np.maximum(values, 0)).astype(np.float16)


def _signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def pixel_features(luma: np.ndarray, signs: tuple[int, ...] = (1, -1)) -> dict[int, tuple[list[np.ndarray],
                                                                                       np.ndarray]]:
    """Per polarity (+1 bright, -1 dark): (the PIXEL_FEATURES maps, log-compressed; active pixels).

    Only active pixels - at least ACTIVE_CONTRAST off the 15-px top-hat background - are scored: the others
    cannot be a defect of that polarity, and skipping them halves the perceptron's work.

    Contrasts go through log1p so that the perceptron works on ratios (contrast against texture level).
    The maps are kept in half precision, plenty for log-compressed values, to halve the memory they hold.
    """
    luma = np.ascontiguousarray(luma, np.float32)
    luma8 = np.clip(luma + 0.5, 0, 255).astype(np.uint8)
    mean15 = cv2.blur(luma, (15, 15))
    std15 = _log(np.sqrt(np.maximum(cv2.blur(luma * luma, (15, 15)) - mean15 * mean15, 0)))
    del mean15
    hessians = [_hessian(luma, sigma) for sigma in (1.0, 2.0)]
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=1) / 2
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=1) / 2
    gradient = np.sqrt(gx * gx + gy * gy)
    sharpness = _log(cv2.dilate(gradient, _SQUARE3))
    # a speck's edge seen from its middle (the 3x3 window reaches only 1 px in)
    sharpness7 = _log(cv2.dilate(gradient, _SQUARE7))
    del gx, gy, gradient
    backgrounds = {1: cv2.MORPH_OPEN, -1: cv2.MORPH_CLOSE}
    tophats9 = {sign: sign * (luma - cv2.morphologyEx(luma, backgrounds[sign], _DISCS[1])) for sign in (1, -1)}
    # texture of both polarities: a dark-on-bright pattern is as busy as a bright-on-dark one
    texture = _log(cv2.dilate(block_level(tophats9[1] + tophats9[-1], LEVEL_BLOCK), _SQUARE3))
    out = {}
    for sign in signs:
        tophat5, tophat15 = (sign * (luma - cv2.morphologyEx(luma, backgrounds[sign], disc))
                             for disc in (_DISCS[0], _DISCS[2]))
        tophat9 = tophats9[sign]
        # the opposite polarity close by: a crease is a bright ridge beside its dark shadow
        opposite9 = _log(cv2.dilate(tophats9[-sign], _SQUARE5))
        # a one-pixel digital curve holds no straight digital segment: thicken it before the line openings
        thick = cv2.dilate(tophat15, _SQUARE3)
        line21, line21_least = _max_opening(thick, _LINES21)
        line41, _ = _max_opening(thick, _LINES41)
        del thick
        line_texture = block_level(line21, LINE_LEVEL_BLOCK)
        maps = [_log(tophat5), _log(tophat9), _log(tophat15), _log(line21), _log(line21_least),
                _log(sign * (luma - cv2.medianBlur(luma8, 11))), _log(sign * (luma - cv2.medianBlur(luma8, 5)))]
        active = tophat15 > ACTIVE_CONTRAST
        del tophat5, tophat9, tophat15, line21, line21_least
        for smaller, larger in hessians:
            # a bright ridge curves down strongly across (smaller eigenvalue < 0) and little along it
            across, along = (-smaller, larger) if sign > 0 else (larger, -smaller)
            maps += [_log(across), _signed_log(along).astype(np.float16)]
        tone = (luma if sign > 0 else 255 - luma) / np.float32(255)
        maps += [texture, _log(line_texture), std15, tone.astype(np.float16), _log(line41), sharpness, sharpness7,
                 opposite9]
        out[sign] = (maps, active)
    return out


def _perceptron(net: dict, rows: np.ndarray) -> np.ndarray:
    """Log-odds of a one-hidden-layer perceptron (ReLU) on feature rows (N x F)."""
    hidden = np.maximum(rows @ net["w1_folded"].T + net["b1_folded"], 0)
    return hidden @ net["w2"] + net["b2"]


def pixel_probability(net: dict, maps: list[np.ndarray], active: np.ndarray) -> np.ndarray:
    """The net's probability at the ``active`` pixels, 0 elsewhere (float32 H x W)."""
    out = np.zeros(active.shape, np.float32)
    where = np.flatnonzero(active)
    flat_maps = [m.ravel() for m in maps]
    for start in range(0, where.size, PIXEL_CHUNK):
        index = where[start:start + PIXEL_CHUNK]
        rows = np.stack([m[index] for m in flat_maps], axis=1).astype(np.float32)
        out.ravel()[index] = 1 / (1 + np.exp(-np.clip(_perceptron(net, rows), -30, 30)))
    return out


def context_features(first: dict[int, np.ndarray]) -> dict[int, list[np.ndarray]]:
    """CONTEXT_FEATURES per polarity: how the first pass's probabilities ``first`` are laid out around each pixel.

    A defect pixel sits on a long coherent run of likely pixels (a scratch) or in a compact cluster (a
    speck); a texture pixel among scattered ones. The opposite polarity's probability and its runs count too
    (a crease is a bright ridge beside a dark shadow line).
    """
    # the openings in 1/255 steps: a quarter of the float time, and they commute with the rounding
    steps = {sign: np.clip(own * 255 + 0.5, 0, 255).astype(np.uint8) for sign, own in first.items()}
    lines = {sign: _max_opening(own, _LINES21) for sign, own in steps.items()}
    out = {}
    for sign, own in first.items():
        along21, least21 = lines[sign]
        along41, _ = _max_opening(steps[sign], _LINES41)
        runs = [m.astype(np.float16) / np.float16(255) for m in
                (along21, least21, along41, cv2.dilate(lines[-sign][0], _SQUARE5))]
        out[sign] = [own.astype(np.float16), *runs[:3], cv2.blur(own, (9, 9)).astype(np.float16),
                     cv2.dilate(own, _SQUARE5).astype(np.float16), cv2.dilate(first[-sign], _SQUARE5).astype(np.float16),
                     runs[3]]
    return out


def components(probability: np.ndarray) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """8-connected components of ``probability > PIXEL_BAR``: (count, labels, per-component measures)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((probability > PIXEL_BAR).astype(np.uint8),
                                                               connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    flat = labels.ravel()
    p = probability.ravel()
    peak = np.zeros(count, np.float32)
    np.maximum.at(peak, flat, p)
    return count, labels, {"area": area, "extent": np.hypot(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]),
                           "mean": np.bincount(flat, p, count) / np.maximum(area, 1), "peak": peak}


def load_weights(path: Path = WEIGHTS_PATH) -> list[dict]:
    """The ensemble's members: {"pixel_features": count, "context_features": count, "nets": prepared}."""
    return [prepare_member(raw) for raw in json.loads(path.read_text())["members"]]


def prepare_member(raw: dict) -> dict:
    # a member uses the leading features of each list: one trained before later features were added still fits
    return {"pixel_features": len(raw["pixel_features"]), "context_features": len(raw["context_features"]),
            "nets": prepare_nets(raw["nets"])}


def prepare_nets(raw_nets: dict) -> dict:
    """The nets as float32 arrays, ready for _perceptron."""
    nets = {}
    for name, raw in raw_nets.items():
        net = {key: np.asarray(value, np.float32) for key, value in raw.items()}
        # the input standardisation folded into the first layer: one matrix product per batch
        net["w1_folded"] = net["w1"] / net["scale"][None, :]
        net["b1_folded"] = net["b1"] - net["w1_folded"] @ net["mean"]
        nets[name] = net
    return nets


_MEMBERS: list[dict] | None = None


def _members() -> list[dict]:
    global _MEMBERS
    if _MEMBERS is None:
        _MEMBERS = load_weights()
    return _MEMBERS


_NAMES = {1: "bright", -1: "dark"}


def first_pass(member: dict, maps: dict[int, list[np.ndarray]], active: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Both polarities' first-pass probability by one member, from the pixel_features maps."""
    used = member["pixel_features"]
    return {sign: pixel_probability(member["nets"][_NAMES[sign]], maps[sign][:used], active[sign])
            for sign in (1, -1)}


def member_probabilities(member: dict, maps: dict[int, list[np.ndarray]], active: dict[int, np.ndarray],
                         signs: tuple[int, ...] = (1, -1)) -> dict[int, np.ndarray]:
    """One member's probability of damage per polarity in ``signs``.

    The first pass scores each pixel from its own features; the second also sees how the first pass's
    probabilities are laid out around it (context_features).
    """
    context = context_features(first_pass(member, maps, active))
    out = {}
    for sign in signs:
        rows = maps[sign][:member["pixel_features"]] + context.pop(sign)[:member["context_features"]]
        out[sign] = pixel_probability(member["nets"]["context_" + _NAMES[sign]], rows, active[sign])
    return out


def ensemble_probabilities(luma: np.ndarray) -> dict[int, np.ndarray]:
    """The perceptron ensemble's probability of damage per polarity (+1 bright, -1 dark): the members' mean.

    The members are trained on different draws, features and sizes; they agree on damage more than on the
    texture each one mistakes for it.
    """
    maps, active = {}, {}
    for sign, (sign_maps, sign_active) in pixel_features(np.ascontiguousarray(luma, np.float32)).items():
        maps[sign], active[sign] = sign_maps, sign_active
    members = _members()
    total = {1: None, -1: None}
    for member in members:
        for sign, p in member_probabilities(member, maps, active).items():
            total[sign] = p if total[sign] is None else total[sign] + p
    return {sign: p / np.float32(len(members)) for sign, p in total.items()}


def cnn_input(luma: np.ndarray, ensemble: dict[int, np.ndarray]) -> np.ndarray:
    """The refiner's input planes (1 x CNN_INPUTS x H x W): the luma centred on mid-grey and the ensemble's
    bright and dark probabilities."""
    return np.stack([luma / np.float32(255) - np.float32(0.5), ensemble[1], ensemble[-1]])[None].astype(np.float32)


_THREAD = threading.local()


def _cnn():
    """This thread's copy of the refiner: an OpenCV dnn Net holds its input and outputs between ``setInput``
    and ``forward``, so requests processed at once (STAGE_CONCURRENCY > 1) must not share one."""
    net = getattr(_THREAD, "cnn", None)
    if net is None:
        net = _THREAD.cnn = cv2.dnn.readNetFromONNX(str(CNN_PATH))
    return net


def cnn_correction(planes: np.ndarray) -> np.ndarray:
    """The refiner's output (2 x H x W: log-odds corrections, bright and dark) on ``cnn_input`` planes.

    Run in strips of CNN_STRIP rows with CNN_HALO rows of context on each side (the network's reach), so
    the result equals one pass over the whole photo while the hidden maps stay small.
    """
    net = _cnn()
    height = planes.shape[2]
    out = np.empty((2, height, planes.shape[3]), np.float32)
    for top in range(0, height, CNN_STRIP):
        bottom = min(height, top + CNN_STRIP)
        start, stop = max(0, top - CNN_HALO), min(height, bottom + CNN_HALO)
        net.setInput(np.ascontiguousarray(planes[:, :, start:stop]))
        out[:, top:bottom] = net.forward()[0, :, top - start:bottom - start]
    return out


def _logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, np.float32(CNN_CLIP), np.float32(1 - CNN_CLIP))
    return np.log(p / (1 - p))


def polarity_probabilities(luma: np.ndarray) -> dict[int, np.ndarray]:
    """Per polarity, the probability of damage: the ensemble's log-odds plus the refiner's correction."""
    luma = np.ascontiguousarray(luma, np.float32)
    ensemble = ensemble_probabilities(luma)
    correction = cnn_correction(cnn_input(luma, ensemble))
    out = {}
    for index, sign in enumerate((1, -1)):
        logit = np.clip(_logits(ensemble.pop(sign)) + correction[index], -30, 30)
        out[sign] = (1 / (1 + np.exp(-logit))).astype(np.float32)
    return out


def defect_probability(luma: np.ndarray, polarity: str = "both") -> np.ndarray:
    """Per-pixel probability of damage: the larger over the polarities asked for."""
    signs = {"both": (1, -1), "bright": (1,), "dark": (-1,)}[polarity]
    probabilities = polarity_probabilities(luma)
    merged = probabilities[signs[0]]
    for sign in signs[1:]:
        merged = np.maximum(merged, probabilities[sign])
    return merged


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def detect(luma: np.ndarray, *, sensitivity: float = 0.5, scratches: bool = True, dust: bool = True,
           polarity: str = "both") -> Detection:
    """Defects in a luminance plane (float32, 8-bit units)."""
    return judge(defect_probability(np.ascontiguousarray(luma, np.float32), polarity), sensitivity=sensitivity,
                 scratches=scratches, dust=dust)


def judge(probability: np.ndarray, *, sensitivity: float = 0.5, scratches: bool = True,
          dust: bool = True) -> Detection:
    """The components of ``probability`` that pass the bars (step 3)."""
    count, labels, measures = components(probability)
    # the bar on a component's mean probability, moved in log-odds by the sensitivity
    bar = _logit(MEAN_BAR) + SENSITIVITY_LOGODDS * (1.0 - 2.0 * sensitivity)
    mean = np.clip(measures["mean"], 1e-6, 1 - 1e-6)
    score = np.log(mean / (1 - mean))
    is_line = measures["extent"] >= LINE_EXTENT
    wanted = ((is_line & scratches) | (~is_line & dust)) & (measures["peak"] > PEAK_BAR) \
        & (measures["area"] >= MIN_AREA)
    wanted[0] = False
    confident = wanted & (score > bar)
    candidate = wanted & (score > bar - CANDIDATE_SHIFT)
    mask = confident[labels]
    counts = {"lines": int((confident & is_line).sum()), "specks": int((confident & ~is_line).sum())}
    return Detection(mask=mask, candidates=candidate[labels] | mask, counts=counts)
