"""Repair stage over HTTP on real processes: detection, clean photos untouched, mask PNG, fill quality, params,
and the gateway's simple-mode flag and forwarded headers."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tools.damage import damage

from .helpers import decode_rgb, photo, png_of

ROOT = Path(__file__).resolve().parent.parent
DETECTION_F1_BAR = 0.6
CLEAN_FLAGGED_BAR = 0.003


def process(stack, image: bytes, **params) -> httpx.Response:
    return httpx.post(stack.url("repair") + "/process", files={"image": ("photo.png", image, "image/png")},
                      data={"params": json.dumps(params)}, timeout=120)


def gateway_post(stack, path: str, image: bytes, **fields) -> httpx.Response:
    return httpx.post(stack.url("gateway") + path, files={"image": ("photo.png", image, "image/png")},
                      data=fields, timeout=300)


def psnr_in(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)[mask].mean()
    return float("inf") if err == 0 else 10 * np.log10(255.0 ** 2 / err)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return np.ascontiguousarray(photo("chelsea"))            # 300 x 451 real photo


@pytest.fixture(scope="module")
def damaged(clean) -> tuple[np.ndarray, np.ndarray]:
    return damage(clean, seed=7, scratches=3, creases=1, dust=25)


def f1(found: np.ndarray, truth: np.ndarray) -> float:
    tp = (found & truth).sum()
    return 2 * tp / (2 * tp + (found & ~truth).sum() + (~found & truth).sum())


def test_mask_only_returns_a_mask_png_that_finds_the_damage(stack, damaged):
    image, truth = damaged
    response = process(stack, png_of(image), mode="mask_only")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    mask = decode_rgb(response.content)
    assert mask.ndim == 2 and mask.shape == truth.shape, "one grey channel, same size as the photo"
    assert set(np.unique(mask)) <= {0, 255}
    found = mask == 255
    score = f1(found, truth)
    assert score >= DETECTION_F1_BAR, f"detection F1 {score:.3f}"
    assert abs(float(response.headers["x-repair-fraction"]) - found.mean()) < 1e-5
    decision = json.loads(response.headers["x-repair-decision"])
    assert decision["mode"] == "mask_only" and decision["repaired"] is False and decision["lines"] >= 1


def test_repair_improves_the_damaged_pixels(stack, clean, damaged):
    image, truth = damaged
    response = process(stack, png_of(image))
    assert response.status_code == 200, response.text
    repaired = decode_rgb(response.content)
    gain = psnr_in(repaired, clean, truth) - psnr_in(image, clean, truth)
    # end to end, the gain is bounded by what the detector finds (the fill alone is measured in bench.repair)
    assert gain >= 2.5, f"only {gain:.2f} dB inside the defect mask"
    decision = json.loads(response.headers["x-repair-decision"])
    assert decision["repaired"] is True and 0 < float(response.headers["x-repair-fraction"]) < 0.1
    # pixels neither flagged nor on a flagged pixel's one-pixel rim come back exactly
    flagged = decode_rgb(process(stack, png_of(image), mode="mask_only").content) == 255
    rim = cv2.dilate(flagged.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert np.array_equal(repaired[~rim], image[~rim])


def test_sparse_fill_beats_telea_on_the_same_mask(stack, clean, damaged):
    image, truth = damaged
    sparse = decode_rgb(process(stack, png_of(image), method="sparse").content)
    telea = decode_rgb(process(stack, png_of(image), method="telea").content)
    # compared where both filled real damage: the pixels the detector flagged inside the true mask
    filled = (sparse != image).any(axis=2) & truth
    assert filled.sum() > 200
    assert psnr_in(sparse, clean, filled) > psnr_in(telea, clean, filled) + 0.5


def test_clean_photo_is_left_unchanged_in_auto(stack, clean):
    response = process(stack, png_of(clean))
    assert response.status_code == 200, response.text
    out = decode_rgb(response.content)
    flagged = float(response.headers["x-repair-fraction"])
    assert flagged < CLEAN_FLAGGED_BAR, f"{flagged:.3%} of a clean photo flagged"
    # at most the flagged pixels and their one-pixel rim change
    changed = (out != clean).any(axis=2).mean()
    assert changed <= 9 * flagged, f"{changed:.3%} of a clean photo changed"


def test_alpha_and_grey_are_kept(stack, shared_images):
    for name in ("children-alpha.png", "wolf-gray.jpg"):
        data = (shared_images / name).read_bytes()
        original = decode_rgb(data)
        response = process(stack, data, mode="force")
        assert response.status_code == 200, response.text
        out = decode_rgb(response.content)
        assert out.shape == original.shape, name
        if name.endswith("alpha.png"):
            assert np.array_equal(out[:, :, 3], original[:, :, 3])


@pytest.mark.parametrize("params, field", [
    ({"sensitivity": 1.5}, "sensitivity"),
    ({"mode": "fix"}, "mode"),
    ({"polarity": "grey"}, "polarity"),
    ({"scratches": False, "dust": False}, "scratches"),
    ({"dust": "yes"}, "dust"),
    ({"strength": 1}, "strength"),
])
def test_bad_params_give_422_naming_the_field(stack, clean, params, field):
    response = process(stack, png_of(clean[:64, :64]), **params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["stage"] == "repair"


def test_corrupt_upload_gives_400(stack, clean):
    response = process(stack, png_of(clean)[:4000])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["stage"] == "repair"


def test_simple_mode_flag_runs_or_skips_repair_and_forwards_headers(stack, damaged):
    image, truth = damaged
    small = png_of(image[:64, :96])   # the simple chain runs the model stages too: keep it tiny
    auto = gateway_post(stack, "/v1/restore", small, colorize="off")
    assert auto.status_code == 200, auto.text
    assert auto.headers["x-stages-run"].split(",")[0] == "repair"
    assert "x-repair-decision" in auto.headers and "x-repair-fraction" in auto.headers
    off = gateway_post(stack, "/v1/restore", small, colorize="off", repair="off")
    assert off.status_code == 200 and "repair" not in off.headers["x-stages-run"].split(",")
    assert "x-repair-decision" not in off.headers
    on = gateway_post(stack, "/v1/restore", small, colorize="off", repair="on")
    assert json.loads(on.headers["x-repair-decision"])["mode"] == "force"
    bad = gateway_post(stack, "/v1/restore", small, repair="maybe")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "repair"


def test_advanced_mode_repair_step_and_mask_through_the_gateway(stack, damaged):
    image, _ = damaged
    stages = json.dumps([{"stage": "repair", "params": {"mode": "mask_only"}}])
    response = gateway_post(stack, "/v1/pipeline", png_of(image), stages=stages)
    assert response.status_code == 200, response.text
    assert decode_rgb(response.content).shape == image.shape[:2]
    assert json.loads(response.headers["x-repair-decision"])["mode"] == "mask_only"
    bad = gateway_post(stack, "/v1/pipeline", png_of(image),
                       stages=json.dumps([{"stage": "repair", "params": {"sensitivity": -1}}]))
    assert bad.status_code == 422 and "sensitivity" in bad.json()["error"]["field"]


def test_info_lists_the_params(stack):
    info = httpx.get(stack.url("repair") + "/info").json()
    names = {p["name"] for p in info["params"]}
    assert {"mode", "sensitivity", "scratches", "dust", "polarity", "method"} <= names
    assert httpx.get(stack.url("repair") + "/health").json()["status"] == "ok"


def test_overlay_tints_exactly_the_flagged_pixels():
    from ui.repair_review import overlay
    rgb = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:12, 5:50] = 255
    tinted = np.asarray(overlay(png_of(rgb), png_of(mask)))
    assert tinted.shape == rgb.shape
    assert (tinted[10:12, 5:50, 0] > 200).all() and (tinted[10:12, 5:50, 1] < 100).all()
    untouched = np.ones((40, 60), bool)
    untouched[10:12, 5:50] = False
    assert (tinted[untouched] == 100).all()


def test_ui_checks_for_damage_shows_the_mask_and_can_decline(stack, monkeypatch, damaged):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("GATEWAY_URL", stack.url("gateway"))
    app = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=300)
    app.run()
    image, _ = damaged
    app.file_uploader(key="upload").set_value(("damaged.png", png_of(image), "image/png"))
    app.run()
    app.button(key="repair_check").click().run()
    assert not app.exception, app.exception
    _, mask_png, decision = app.session_state["repair_mask"]
    assert decode_rgb(mask_png).shape == image.shape[:2] and decision["mode"] == "mask_only"
    assert any("speck" in c.value for c in app.caption)
    assert app.toggle(key="repair_overlay").value is True
    app.toggle(key="repair_overlay").set_value(False).run()
    app.checkbox(key="repair_accept").uncheck().run()
    assert not app.exception, app.exception


def test_detector_finds_a_faint_crease():
    from services.repair.detect import detect
    from services.repair.stage import _LUMA
    clean = np.ascontiguousarray(photo("astronaut"))
    damaged, truth = damage(clean, seed=63, scratches=0, creases=1, dust=0)
    change = np.abs(damaged.astype(np.int16) - clean).max(axis=2)
    assert np.median(change[truth]) < 90, "the crease should be a faint one"
    found = detect(damaged.astype(np.float32) @ _LUMA).mask
    recall = (found & truth).sum() / truth.sum()
    assert recall >= 0.85, f"crease recall {recall:.3f}"
    assert (found & ~truth).mean() < CLEAN_FLAGGED_BAR


@pytest.mark.parametrize("name", ["brick", "grass", "gravel"])
def test_detector_leaves_clean_texture_alone(name):
    from services.repair.detect import detect
    grey = photo(name).astype(np.float32)
    assert detect(grey).mask.mean() < CLEAN_FLAGGED_BAR / 10, f"{name}: texture flagged as damage"


def test_refiner_in_opencv_matches_torch_in_strips(monkeypatch):
    """The ONNX refiner run by OpenCV, strip by strip, equals the same weights run by torch on the whole crop."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from services.repair import detect as det
    from tools.train_repair_cnn import build_net
    model = onnx.load(str(det.CNN_PATH))
    weights = [numpy_helper.to_array(init) for init in model.graph.initializer]
    # the served constants describe the file: its convolutions' dilations (the strips' halo is their sum)
    dilations = [next((list(a.ints) for a in node.attribute if a.name == "dilations"), [1, 1])[0]
                 for node in model.graph.node if node.op_type == "Conv"]
    assert tuple(dilations[:-1]) == det.CNN_DILATIONS and det.CNN_HALO == sum(det.CNN_DILATIONS)
    net = build_net(weights[0].shape[0], det.CNN_DILATIONS)
    params = list(net.parameters())
    assert [w.shape for w in weights] == [tuple(p.shape) for p in params]
    with torch.no_grad():
        for param, value in zip(params, weights):
            param.copy_(torch.from_numpy(value.copy()))
    rng = np.random.default_rng(3)
    shape = (300, 170)                               # taller than a strip and its two halos
    luma = cv2.GaussianBlur(rng.uniform(0, 255, shape).astype(np.float32), (0, 0), 1.5)
    planes = det.cnn_input(luma, {1: rng.random(shape, np.float32), -1: rng.random(shape, np.float32)})
    monkeypatch.setattr(det, "CNN_STRIP", 40)       # several strips, each with its halo
    ours = det.cnn_correction(planes)
    with torch.no_grad():
        theirs = net(torch.from_numpy(planes))[0].numpy()
    assert ours.shape == theirs.shape == (2, *shape)
    assert np.abs(ours - theirs).max() < 1e-4


def test_refiner_gives_each_request_its_own_answer_when_they_run_at_once():
    """Requests processed at once (STAGE_CONCURRENCY > 1) each get the refiner's answer for their own photo:
    an OpenCV Net holds its input between setInput and forward, so each thread runs its own copy."""
    from concurrent.futures import ThreadPoolExecutor

    from services.repair import detect as det
    rng = np.random.default_rng(5)
    inputs = []
    for _ in range(4):
        luma = cv2.GaussianBlur(rng.uniform(0, 255, (600, 300)).astype(np.float32), (0, 0), 1.5)
        inputs.append(det.cnn_input(luma, {1: rng.random(luma.shape, np.float32),
                                           -1: rng.random(luma.shape, np.float32)}))
    alone = [det.cnn_correction(planes) for planes in inputs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            together = list(pool.map(det.cnn_correction, inputs))
            assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_refiner_weights_are_small_onnx_and_serving_imports_no_torch():
    import subprocess
    import sys
    from services.repair.detect import CNN_PATH
    assert CNN_PATH.stat().st_size < 1 << 20
    code = ("import sys, numpy as np; from services.repair.detect import detect; "
            "detect(np.full((64, 64), 128, np.float32)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_detector_finds_a_faint_scratch_on_a_busy_photo():
    from services.repair.detect import detect
    from services.repair.stage import _LUMA
    clean = np.ascontiguousarray(photo("coffee"))
    damaged, truth = damage(clean, seed=41, scratches=1, creases=0, dust=0)
    found = detect(damaged.astype(np.float32) @ _LUMA).mask
    recall = (found & truth).sum() / truth.sum()
    assert recall >= 0.6, f"scratch recall {recall:.3f}"
    assert (found & ~truth).mean() < CLEAN_FLAGGED_BAR


def test_detector_finds_scratches_across_busy_texture():
    """High-contrast scratches across gravel: the perceptron ensemble alone finds none of them (its components
    there have a doubtful mean), the refiner, which sees the photo around them, most."""
    from services.repair.detect import detect
    from services.repair.stage import _LUMA
    clean = np.ascontiguousarray(np.repeat(photo("gravel")[:, :, None], 3, axis=2))
    damaged, truth = damage(clean, seed=52, scratches=2, creases=0, dust=0)
    found = detect(damaged.astype(np.float32) @ _LUMA).mask
    recall = (found & truth).sum() / truth.sum()
    assert recall >= 0.6, f"scratch recall on gravel {recall:.3f}"
    assert (found & ~truth).mean() < CLEAN_FLAGGED_BAR / 10


@pytest.mark.parametrize("seed", [61, 62])
def test_detector_finds_dust_on_a_busy_photo(seed):
    from services.repair.detect import detect
    from services.repair.stage import _LUMA
    clean = np.ascontiguousarray(photo("coffee"))
    damaged, truth = damage(clean, seed=seed, scratches=0, creases=0, dust=40)
    found = detect(damaged.astype(np.float32) @ _LUMA).mask
    recall = (found & truth).sum() / truth.sum()
    assert recall >= 0.7, f"dust recall {recall:.3f}"
    assert (found & ~truth).mean() < CLEAN_FLAGGED_BAR / 10


def test_refiner_trainer_uses_the_served_conventions():
    """The trainer feeds the refiner what the service does: the same luma weights, log-odds clip and input planes."""
    from services.repair import detect as det
    from services.repair.stage import _LUMA
    from tools import train_repair_cnn as trainer
    assert np.array_equal(trainer.LUMA, _LUMA)
    assert trainer.CLIP == det.CNN_CLIP
    luma = np.random.default_rng(0).uniform(0, 255, (20, 30)).astype(np.float32)
    p = np.random.default_rng(1).random((2, 20, 30)).astype(np.float32)
    ours = trainer.planes_of(np.clip(luma + 0.5, 0, 255).astype(np.uint8), p)
    served = det.cnn_input(np.clip(luma + 0.5, 0, 255).astype(np.uint8).astype(np.float32), {1: p[0], -1: p[1]})[0]
    assert np.abs(ours - served).max() < 1e-6
