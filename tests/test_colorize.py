"""Colorize stage: ECCV16 / SIGGRAPH17 against the reference code, full-resolution lightness, inputs, auto mode,
weights handling and the HTTP service.

The official weights cannot be downloaded here, so the networks and the pipeline are checked with random
weights (loaded through the service's own loader, ``weights_only=True``) against the authors' reference
implementation, PyPI ``rz-colorization==1.0.5`` (package ``colorizers``; install with
``pip install -r services/colorize/requirements-test.txt``). The served stage, whose weights are missing,
must answer 503 with the fetch command.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from shared.contract import InvalidParams, ModelUnavailable, StageContext
from shared.imaging import decode_image, encode_png
from shared.model_store import ModelStore, sha256_of

from services.colorize.colour import chroma_decision, lightness
from services.colorize.models import ECCV16, MODEL_FILES, SIGGRAPH17, ColorizeModels, build_network
from services.colorize.stage import CHROMA_HEADER, DECISION_HEADER, colorize_array, decide, make_colorize
from tests.helpers import png_of, jpeg_of, photo, psnr
from tools.colorize_reference import INSTALL_HINT, import_colorizers
from tools.colorize_weights import random_state_dict

MODELS = (ECCV16, SIGGRAPH17)


# ----------------------------------------------------------------------------------------- fixtures

def import_reference():
    try:
        return import_colorizers()
    except ImportError as exc:
        pytest.fail(f"the reference implementation is not installed ({exc}); run `{INSTALL_HINT}`")


@pytest.fixture(scope="session")
def reference():
    return import_reference()


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """A model cache holding random checkpoints under the official file names."""
    directory = tmp_path_factory.mktemp("colorize-models")
    for name in MODELS:
        template = build_network(name).state_dict()
        torch.save(random_state_dict(template, name, seed=1), directory / MODEL_FILES[name].filename)
    return directory


@pytest.fixture(scope="session")
def models(weights_dir) -> ColorizeModels:
    return ColorizeModels(ModelStore(weights_dir))


@pytest.fixture(scope="session")
def reference_nets(reference, weights_dir):
    nets = {ECCV16: reference.eccv16(pretrained=False), SIGGRAPH17: reference.siggraph17(pretrained=False)}
    for name, net in nets.items():
        net.load_state_dict(torch.load(weights_dir / MODEL_FILES[name].filename, weights_only=True))
        net.eval()
    return nets


def gray_photo(height: int, width: int, name: str = "astronaut") -> np.ndarray:
    rgb = cv2.resize(photo(name), (width, height), interpolation=cv2.INTER_AREA)
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)


def reference_output(reference, net, rgb8: np.ndarray, render_size: int) -> np.ndarray:
    tens_l_orig, tens_l_rs = reference.preprocess_img(rgb8, HW=(render_size, render_size))
    with torch.inference_mode():
        ab = net(tens_l_rs)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reference.postprocess_tens(tens_l_orig, ab)


def lab_l(rgb: np.ndarray) -> np.ndarray:
    from skimage import color
    return color.rgb2lab(rgb)[..., 0]


def run_stage(models, data: bytes, **params):
    values = {"model": ECCV16, "saturation": 1.0, "render_size": 64, "mode": "force", "gamut": "keep-lightness"}
    values.update(params)
    ctx = StageContext()
    picture = decode_image(data, 10_000_000)
    return picture, make_colorize(models)(picture, values, ctx), ctx


# ------------------------------------------------------------------------------ network vs reference

@pytest.mark.parametrize("name", MODELS)
def test_state_dict_layout_is_the_official_one(reference, name):
    ours = build_network(name).state_dict()
    theirs = (reference.eccv16 if name == ECCV16 else reference.siggraph17)(pretrained=False).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)
    expected_params = {ECCV16: 32_241_010, SIGGRAPH17: 34_192_796}[name]
    assert sum(v.numel() for v in ours.values()) == expected_params


@pytest.mark.parametrize("name", MODELS)
def test_network_equals_reference(models, reference_nets, name):
    lightness_in = torch.rand(1, 1, 64, 96, generator=torch.Generator().manual_seed(3)) * 100
    with torch.inference_mode():
        expected = reference_nets[name](lightness_in).numpy()[0]
    got = models.get(name)(lightness_in.numpy()[0, 0])
    assert got.shape == expected.shape == (2, 64, 96)
    assert np.abs(got - expected).max() < 1e-3
    assert expected.std() > 5  # the test weights give content-dependent colour, not a constant


# ------------------------------------------------------------------------------ pipeline vs reference

ORACLE_CASES = [  # (model, height, width, render size)
    (ECCV16, 256, 256, 256), (SIGGRAPH17, 192, 320, 256),
    (ECCV16, 300, 700, 128), (SIGGRAPH17, 700, 300, 128),
    (ECCV16, 40, 900, 64), (SIGGRAPH17, 513, 17, 64),
    (ECCV16, 7, 3, 64), (SIGGRAPH17, 1, 1, 64),
]


@pytest.mark.parametrize("name,height,width,render", ORACLE_CASES)
def test_pipeline_equals_reference(models, reference, reference_nets, name, height, width, render):
    rgb8 = gray_photo(height, width)
    expected = reference_output(reference, reference_nets[name], rgb8, render)
    rgb = rgb8.astype(np.float32) / 255
    clipped = colorize_array(rgb, models.get(name), render, keep_lightness=False)
    assert clipped.shape == expected.shape and clipped.dtype == np.float32
    assert psnr(clipped, expected, 1.0) >= 45.0
    # default gamut handling: identical wherever the reference needed no clipping ...
    kept = colorize_array(rgb, models.get(name), render)
    reference_l_changed = np.abs(lab_l(expected) - lab_l(rgb8)) > 0.05
    in_gamut = ~reference_l_changed
    if in_gamut.any():
        assert psnr(kept[in_gamut], expected[in_gamut], 1.0) >= 45.0
    # ... and the output's lightness is the input's everywhere (the reference's is not where it clipped)
    assert np.abs(lab_l(kept) - lab_l(rgb8)).max() < 0.01


def test_colour_input_forced_equals_reference(models, reference, reference_nets):
    rgb8 = cv2.resize(photo("coffee"), (200, 150), interpolation=cv2.INTER_AREA)
    expected = reference_output(reference, reference_nets[ECCV16], rgb8, 64)
    got = colorize_array(rgb8.astype(np.float32) / 255, models.get(ECCV16), 64, keep_lightness=False)
    assert psnr(got, expected, 1.0) >= 45.0


def test_lightness_survives_the_8bit_round_trip(models):
    gray8 = gray_photo(180, 240)
    picture, result, _ = run_stage(models, png_of(gray8))
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(result))).convert("RGB"))
    error_levels = np.abs(lab_l(decoded) - lab_l(gray8)) * 255 / 100
    assert error_levels.max() <= 1.0
    chroma = np.hypot(*np.moveaxis(cv2.cvtColor(decoded.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 1:], 2, 0))
    assert np.percentile(chroma, 50) > 3  # it was colorized
    # full-resolution detail: the output's lightness is the input's, not the network's 64 x 64 view
    assert np.abs(lightness(result.rgb).L - lightness(picture.rgb).L).max() < 1e-3
    # the reference's channel clipping would change L here (why keep-lightness is the default)
    _, clipped, _ = run_stage(models, png_of(gray8), gamut="clip")
    clipped8 = np.asarray(Image.open(io.BytesIO(encode_png(clipped))).convert("RGB"))
    assert (np.abs(lab_l(clipped8) - lab_l(gray8)) * 255 / 100).max() > 1.0


# ------------------------------------------------------------------------------------------ inputs

def test_rgb_gray_and_true_grayscale_inputs_agree(models):
    gray8 = gray_photo(64, 80)
    _, from_rgb, _ = run_stage(models, png_of(gray8))
    _, from_l, _ = run_stage(models, png_of(gray8[:, :, 0]))
    assert from_rgb.rgb.shape == from_l.rgb.shape == (64, 80, 3)
    assert np.array_equal(from_rgb.rgb, from_l.rgb)
    assert not np.allclose(from_rgb.rgb[..., 0], from_rgb.rgb[..., 2], atol=2 / 255)


def test_16bit_input_keeps_16bit_lightness(models):
    gray16 = (gray_photo(48, 64).astype(np.float64)[..., 0] * 257 + np.random.default_rng(0).integers(0, 257, (48, 64)))
    gray16 = np.clip(gray16, 0, 65535).astype(np.uint16)
    picture, result, _ = run_stage(models, png_of(gray16))
    assert picture.bit_depth == result.bit_depth == 16
    out = cv2.imdecode(np.frombuffer(encode_png(result), np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (48, 64, 3)
    rgb = out[..., ::-1].astype(np.float64) / 65535
    source = np.repeat(gray16[..., None].astype(np.float64) / 65535, 3, axis=2)
    assert np.abs(lab_l(rgb) - lab_l(source)).max() < 0.02  # far finer than an 8-bit level (0.39)


def test_alpha_is_kept(models):
    gray8 = gray_photo(40, 50)
    alpha = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (40, 1))
    picture, result, _ = run_stage(models, png_of(np.dstack([gray8, alpha])))
    assert result.alpha is not None and np.array_equal(result.alpha, picture.alpha)
    out = cv2.imdecode(np.frombuffer(encode_png(result), np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.shape == (40, 50, 4) and np.array_equal(out[..., 3], alpha)


@pytest.mark.parametrize("height,width", [(1, 1), (7, 3), (3, 7), (12, 2400), (1, 300)])
def test_tiny_and_very_wide_images(models, height, width):
    gray8 = gray_photo(max(height, 2), width)[:height]
    picture, result, _ = run_stage(models, png_of(gray8), model=SIGGRAPH17 if width > 100 else ECCV16)
    assert result.rgb.shape == (height, width, 3) and np.isfinite(result.rgb).all()
    assert result.rgb.min() >= 0 and result.rgb.max() <= 1
    assert np.abs(lightness(result.rgb).L - lightness(picture.rgb).L).max() < 1e-3


# ------------------------------------------------------------------------------------------ params

def test_saturation_scales_chroma(models):
    data = png_of(gray_photo(48, 48))
    chroma = {}
    for saturation in (0.0, 0.5, 1.0):
        _, result, _ = run_stage(models, data, saturation=saturation)
        lab = cv2.cvtColor(result.rgb, cv2.COLOR_RGB2Lab)
        chroma[saturation] = float(np.hypot(lab[..., 1], lab[..., 2]).mean())
    assert chroma[0.0] < 0.5 < chroma[0.5] < chroma[1.0]
    assert chroma[0.5] == pytest.approx(chroma[1.0] / 2, rel=0.25)


def test_render_size_must_be_a_multiple_of_8(models):
    with pytest.raises(InvalidParams) as info:
        run_stage(models, png_of(gray_photo(16, 16)), render_size=100)
    assert info.value.field == "render_size" and info.value.status == 422


# ------------------------------------------------------------------------------------------ auto mode

def load_rgb(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    picture = decode_image(path.read_bytes(), 10_000_000)
    return picture.rgb, picture.alpha


def sepia(rgb: np.ndarray) -> np.ndarray:
    """The classic sepia-toning matrix."""
    matrix = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
    return np.clip(rgb @ matrix.T, 0, 1).astype(np.float32)


def split_toned(rgb: np.ndarray) -> np.ndarray:
    """Cool shadows, warm highlights: a tint that changes with lightness."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    t = lab[..., 0] / 100
    lab[..., 1] = 2 * (1 - t) + 6 * t
    lab[..., 2] = -12 * (1 - t) + 22 * t
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1)


def as_jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    data = jpeg_of((rgb * 255 + 0.5).astype(np.uint8), quality=quality)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32) / 255


@pytest.mark.parametrize("image,colour", [
    ("gray-00017.png", False), ("wolf-gray.jpg", False), ("children-alpha.png", True),
    ("ost-009.png", True), ("small-0014.jpg", True), ("tree-alpha-16bit.png", True)])
def test_auto_decision_on_shared_images(shared_images, image, colour):
    rgb, alpha = load_rgb(shared_images / image)
    decision = chroma_decision(rgb, alpha)
    assert decision.colour is colour, decision.header()


def test_auto_decision_sepia_and_toned_prints_are_monochrome(shared_images):
    gray, _ = load_rgb(shared_images / "gray-00017.png")
    colour, _ = load_rgb(shared_images / "ost-009.png")
    monochrome = {"sepia": sepia(gray), "sepia jpeg q60": as_jpeg(sepia(gray), 60),
                  "split-toned": split_toned(gray), "split-toned jpeg q50": as_jpeg(split_toned(gray), 50),
                  "sepia of a colour photo": sepia(colour)}
    for name, rgb in monochrome.items():
        decision = chroma_decision(rgb)
        assert not decision.colour, (name, decision.header())
        if name.startswith("sepia"):
            assert decision.tint_chroma > 8, (name, decision.header())  # tinted, yet monochrome
    luma = np.repeat(cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    faded = luma + 0.3 * (colour - luma)
    assert chroma_decision(faded).colour  # a faded colour photo still has real colour


def test_auto_mode_skips_colour_photos_without_a_model(shared_images, tmp_path):
    empty = ColorizeModels(ModelStore(tmp_path))
    data = (shared_images / "ost-009.png").read_bytes()
    picture, result, ctx = run_stage(empty, data, mode="auto")
    assert result is picture
    assert ctx.response_headers[DECISION_HEADER] == "skipped-colour-photo"
    assert "residual_chroma_p90=" in ctx.response_headers[CHROMA_HEADER]
    assert decide(picture).colour


def test_auto_mode_colorizes_sepia(models, shared_images):
    gray, _ = load_rgb(shared_images / "wolf-gray.jpg")
    toned = (sepia(gray[:64, :64]) * 255 + 0.5).astype(np.uint8)
    picture, result, ctx = run_stage(models, png_of(toned), mode="auto")
    assert ctx.response_headers[DECISION_HEADER] == "colorized"
    assert not np.array_equal(result.rgb, picture.rgb)
    assert np.abs(lightness(result.rgb).L - lightness(picture.rgb).L).max() < 1e-3


# ------------------------------------------------------------------------------------------ weights

def test_download_checks_the_sha256_prefix(tmp_path, weights_dir):
    source = weights_dir / MODEL_FILES[ECCV16].filename
    digest = sha256_of(source)
    good = dataclasses.replace(MODEL_FILES[ECCV16], url=source.as_uri(), sha256=digest[:8])
    store = ModelStore(tmp_path / "cache")
    path = store.fetch(good, allow_provision=False, progress=False)
    assert path.name == "colorization_release_v2-9b330a0b.pth" and sha256_of(path) == digest
    assert ColorizeModels(store).get(ECCV16) is not None
    bad = dataclasses.replace(good, sha256="9b330a0b" if digest[:8] != "9b330a0b" else "00000000")
    with pytest.raises(ModelUnavailable) as info:
        ModelStore(tmp_path / "other").fetch(bad, allow_provision=False, progress=False)
    assert "does not match" in info.value.message and not (tmp_path / "other" / good.filename).exists()


def test_official_names_urls_and_hash_prefixes():
    for name, spec in MODEL_FILES.items():
        assert spec.url == "https://colorizers.s3.us-east-2.amazonaws.com/" + spec.filename
        assert spec.filename.rsplit("-", 1)[1] == spec.sha256 + ".pth"
        assert spec.fetch_command == f"python -m services.colorize.fetch {name}"


class NotWeights:  # a pickled object that weights_only loading must refuse
    pass


def test_unsafe_or_mismatched_checkpoints_are_unavailable(tmp_path):
    torch.save({"model": NotWeights()}, tmp_path / MODEL_FILES[ECCV16].filename)
    template = build_network(SIGGRAPH17).state_dict()
    state = random_state_dict(template, SIGGRAPH17)
    del state["model_class.0.weight"]
    torch.save(state, tmp_path / MODEL_FILES[SIGGRAPH17].filename)
    store = ColorizeModels(ModelStore(tmp_path))
    for name in MODELS:
        with pytest.raises(ModelUnavailable) as info:
            store.get(name)
        assert info.value.status == 503 and f"python -m services.colorize.fetch {name}" in info.value.message


def test_missing_weights_are_a_clear_503(tmp_path):
    with pytest.raises(ModelUnavailable) as info:
        ColorizeModels(ModelStore(tmp_path)).get(None)
    assert info.value.status == 503 and "python -m services.colorize.fetch eccv16" in info.value.message


# ------------------------------------------------------------------------------------------ HTTP

def test_http_service(stack, shared_images):
    url = stack.url("colorize")
    info = httpx.get(url + "/info").json()
    params = {p["name"]: p for p in info["params"]}
    assert params["model"]["choices"] == [ECCV16, SIGGRAPH17] and params["model"]["default"] == ECCV16
    assert params["mode"]["default"] == "auto" and params["render_size"]["default"] == 256
    assert info["default_model"] == ECCV16
    health = httpx.get(url + "/health").json()
    installed = ModelStore().is_available(MODEL_FILES[ECCV16])
    assert health["models"][ECCV16]["available"] is installed
    gray = png_of(gray_photo(40, 60))
    bad = httpx.post(url + "/process", files={"image": ("g.png", gray)}, data={"params": '{"saturation": 3}'})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "saturation"
    bad = httpx.post(url + "/process", files={"image": ("g.png", gray)}, data={"params": '{"render_size": 100}'})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "render_size"
    reply = httpx.post(url + "/process", files={"image": ("g.png", gray)}, timeout=300)
    if installed:
        assert health["status"] == "ok"
        assert reply.status_code == 200 and reply.headers[DECISION_HEADER] == "colorized"
    else:  # as here: the official weights cannot be downloaded
        assert health["status"] == "unavailable"
        assert reply.status_code == 503
        error = reply.json()["error"]
        assert error["code"] == "model_unavailable" and error["model"] == ECCV16
        assert error["fetch_command"] == "python -m services.colorize.fetch eccv16"
    # a colour photo in auto mode comes back untouched, with the decision, model or not
    colour = (shared_images / "small-0014.jpg").read_bytes()
    reply = httpx.post(url + "/process", files={"image": ("c.jpg", colour)}, timeout=60)
    assert reply.status_code == 200 and reply.headers[DECISION_HEADER] == "skipped-colour-photo"
    assert "residual_chroma_p90=" in reply.headers[CHROMA_HEADER]
    original = decode_image(colour).rgb
    returned = np.asarray(Image.open(io.BytesIO(reply.content)).convert("RGB"), np.float32) / 255
    assert np.abs(returned - original).max() < 1e-6
