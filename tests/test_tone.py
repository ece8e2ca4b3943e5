"""Tone stage (faded prints) over HTTP on real processes: decisions, quality, params, gateway and UI wiring."""
from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from skimage.color import deltaE_ciede2000, rgb2lab

from bench.tone import fade_print
from cli.main import parse_args
from ui.tone_panel import describe, tone_decision

from .helpers import decode_rgb, jpeg_of, photo, png_of

HEADER = "x-tone-decision"


def post(url: str, image: bytes, timeout: float = 300, **fields) -> httpx.Response:
    data = {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in fields.items()}
    return httpx.post(url, files={"image": ("photo.png", image, "image/png")}, data=data, timeout=timeout)


def process(stack, image: bytes, **params) -> httpx.Response:
    return post(stack.url("tone") + "/process", image, params=params)


def rgb_of(data: bytes) -> np.ndarray:
    """Decoded result as RGB(A) (a grey result is stored as a one-channel PNG)."""
    out = decode_rgb(data)
    return np.repeat(out[:, :, None], 3, axis=2) if out.ndim == 2 else out


def as8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def mean_delta_e(a8: np.ndarray, b8: np.ndarray) -> float:
    return float(deltaE_ciede2000(rgb2lab(a8[:, :, :3]), rgb2lab(b8[:, :, :3])).mean())


@pytest.fixture(scope="module")
def originals() -> dict[str, np.ndarray]:
    """Small real photos (uint8 RGB): colour and black-and-white."""
    camera = photo("camera")[::2, ::2]
    return {"coffee": photo("coffee")[::2, ::2], "astronaut": photo("astronaut")[::2, ::2],
            "camera": np.repeat(camera[:, :, None], 3, axis=2)}


def faded8(original: np.ndarray, strength: float = 0.66, monochrome: bool = False) -> np.ndarray:
    return as8(fade_print(original / 255.0, strength, monochrome=monochrome, seed=1))


def decision(response: httpx.Response) -> dict:
    return json.loads(response.headers[HEADER])


def test_contract(stack):
    health = httpx.get(stack.url("tone") + "/health").json()
    assert health == {"status": "ok", "stage": "tone", "models": {}}
    info = httpx.get(stack.url("tone") + "/info").json()
    params = {p["name"]: p for p in info["params"]}
    assert set(params) == {"strength", "cast", "contrast", "mode"}
    assert params["mode"]["choices"] == ["auto", "force"] and params["mode"]["default"] == "auto"
    assert (params["strength"]["minimum"], params["strength"]["maximum"]) == (0.0, 1.0)


def test_auto_leaves_unfaded_photos_untouched(stack, originals):
    for name in ("coffee", "astronaut", "camera"):
        response = process(stack, png_of(originals[name]))
        assert response.status_code == 200, response.text
        measured = decision(response)
        assert measured["decision"] == "unchanged" and not measured["faded"], (name, measured)
        assert np.array_equal(rgb_of(response.content), originals[name]), name


def test_auto_corrects_a_faded_print_and_reduces_delta_e(stack, originals):
    original = originals["coffee"]
    faded = faded8(original)
    response = process(stack, png_of(faded))
    assert response.status_code == 200, response.text
    measured = decision(response)
    assert measured["decision"] == "corrected" and measured["faded"] and not measured["monochrome"]
    assert min(measured["density_kept"]) < 0.95 and measured["contrast"]["l_std"] > 0
    before, after = mean_delta_e(faded, original), mean_delta_e(rgb_of(response.content), original)
    assert after < 0.5 * before, (before, after)
    # strength 0 measures the same and changes nothing
    untouched = process(stack, png_of(faded), strength=0.0)
    assert decision(untouched)["decision"] == "corrected"
    assert np.abs(rgb_of(untouched.content).astype(int) - faded).max() <= 1


def test_cast_off_keeps_the_balance_between_channels(stack, originals):
    faded = faded8(originals["astronaut"])
    faded[:40, :40] = 128                   # a neutral patch in a colour print
    with_cast = process(stack, png_of(faded))
    without = process(stack, png_of(faded), cast=False)
    assert with_cast.status_code == without.status_code == 200
    assert decision(with_cast)["applied"]["cast"] is True and decision(without)["applied"]["cast"] is False
    kept, balanced = rgb_of(without.content)[:40, :40], rgb_of(with_cast.content)[:40, :40]
    assert np.array_equal(kept[..., 0], kept[..., 1]) and np.array_equal(kept[..., 1], kept[..., 2])
    assert not np.array_equal(balanced[..., 0], balanced[..., 2])  # per-channel curves differ


def test_a_flat_picture_is_returned_unchanged_even_when_forced(stack):
    flat = np.full((16, 16, 3), (150, 140, 120), np.uint8)
    response = process(stack, png_of(flat), mode="force")
    assert decision(response)["decision"] == "unchanged-no-tonal-range"
    assert np.array_equal(rgb_of(response.content), flat)


def test_force_corrects_what_auto_leaves(stack, originals):
    image = png_of(originals["astronaut"])
    auto = process(stack, image)
    forced = process(stack, image, mode="force")
    assert decision(auto)["decision"] == "unchanged"
    assert forced.status_code == 200 and decision(forced)["decision"] == "corrected-forced"
    assert rgb_of(forced.content).shape == originals["astronaut"].shape


def test_black_and_white_print_stays_grey_and_loses_its_yellowing(stack, originals):
    original = originals["camera"]
    faded = faded8(original, monochrome=True)
    assert faded[:, :, 2].mean() < faded[:, :, 0].mean() - 3     # the paper has yellowed
    response = process(stack, png_of(faded))
    measured = decision(response)
    assert measured["monochrome"] and measured["decision"] == "corrected"
    out = rgb_of(response.content)
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])
    assert mean_delta_e(out, original) < 0.5 * mean_delta_e(faded, original)
    tinted = rgb_of(process(stack, png_of(faded), cast=False).content)   # cast off: the tint is kept
    assert tinted[:, :, 2].mean() < tinted[:, :, 0].mean() - 1


def test_local_contrast_only_where_levels_leave_the_photo_flat(stack, originals):
    flat = (115 + originals["astronaut"] // 10).astype(np.uint8)   # low contrast ...
    flat[::10, ::10], flat[5::10, 5::10] = 0, 255                  # ... that levels cannot stretch
    plain = process(stack, png_of(flat), mode="force", contrast=0.0)
    boosted = process(stack, png_of(flat), mode="force", contrast=1.0)
    assert decision(plain)["applied"]["local_contrast"] == 0 and decision(boosted)["applied"]["local_contrast"] > 0
    body = np.ones(flat.shape[:2], bool)
    body[::10, ::10] = body[5::10, 5::10] = False
    assert rgb_of(boosted.content)[body].std() > rgb_of(plain.content)[body].std() * 1.1
    # a photo with its full range gets none, whatever the parameter
    full = process(stack, png_of(faded8(originals["coffee"])), contrast=1.0)
    assert decision(full)["applied"]["local_contrast"] == 0


def test_alpha_is_kept(stack, originals):
    rgba = np.dstack([faded8(originals["coffee"]), np.full(originals["coffee"].shape[:2], 200, np.uint8)])
    rgba[:20, :20, 3] = 0
    out = rgb_of(process(stack, png_of(rgba)).content)
    assert out.shape[2] == 4 and np.array_equal(out[:, :, 3], rgba[:, :, 3])


@pytest.mark.parametrize("params, field", [({"strength": 1.5}, "strength"), ({"contrast": -0.1}, "contrast"),
                                           ({"mode": "sometimes"}, "mode"), ({"cast": "yes"}, "cast"),
                                           ({"gamma": 2}, "gamma")])
def test_bad_params_are_422(stack, params, field):
    response = process(stack, png_of(np.zeros((8, 8, 3), np.uint8)), **params)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_params" and error["field"] == field and error["stage"] == "tone"


def test_bad_image_is_a_4xx_json_error(stack):
    response = httpx.post(stack.url("tone") + "/process", files={"image": ("x.png", b"not an image", "image/png")})
    assert 400 <= response.status_code < 500 and response.json()["error"]["stage"] == "tone"


# --- gateway ------------------------------------------------------------------------------------------
def test_simple_mode_runs_tone_before_colorize_and_forwards_the_decision(stack, originals):
    gateway = stack.url("gateway")
    faded = faded8(originals["coffee"][::4, ::4])   # 50 x 75: the model stages on a CPU stay quick
    response = post(gateway + "/v1/restore", png_of(faded), colorize="off", upscale="none")
    assert response.status_code == 200, response.text
    run = response.headers["x-stages-run"].split(",")
    assert "tone" in run and run.index("tone") > run.index("denoise")
    assert json.loads(response.headers[HEADER])["decision"] == "corrected"
    # tone=off: the chain without tone (test_jobs_api_takes_the_tone_flag sees the same through jobs)

    bad = post(gateway + "/v1/restore", png_of(faded), tone="sometimes")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "tone"


def test_simple_chain_puts_tone_before_colorize():
    from gateway.chains import simple_chain
    names = [s.name for s in simple_chain("on", "none")]
    assert names.index("tone") < names.index("colorize")
    assert next(s for s in simple_chain("on", "none") if s.name == "tone").params == {"mode": "auto"}
    assert "tone" not in [s.name for s in simple_chain("on", "none", tone="off")]


def test_jobs_api_takes_the_tone_flag(stack, originals):
    gateway = stack.url("gateway")
    image = png_of(originals["coffee"][:48, :48])
    for flag, expected in (("off", False), ("auto", True)):
        created = post(gateway + "/v1/jobs", image, mode="simple", colorize="off", tone=flag)
        assert created.status_code == 202, created.text
        assert ("tone" in created.json()["stages"]) is expected
        httpx.delete(f"{gateway}/v1/jobs/{created.json()['id']}")   # only the chain was under test


def test_advanced_mode_tone_step_matches_the_stage(stack, originals):
    faded = png_of(faded8(originals["astronaut"]))
    params = {"mode": "force", "strength": 0.8, "contrast": 1.0}
    via_gateway = post(stack.url("gateway") + "/v1/pipeline", faded, stages=[{"stage": "tone", "params": params}])
    direct = process(stack, faded, **params)
    assert via_gateway.status_code == 200, via_gateway.text
    assert np.array_equal(rgb_of(via_gateway.content), rgb_of(direct.content))
    assert json.loads(via_gateway.headers[HEADER]) == decision(direct)
    bad = post(stack.url("gateway") + "/v1/pipeline", faded, stages=[{"stage": "tone", "params": {"strength": 3}}])
    assert bad.status_code == 422 and "strength" in bad.json()["error"]["field"]


# --- CLI and UI ---------------------------------------------------------------------------------------
def test_cli_has_the_simple_tone_flag():
    assert parse_args(["x.jpg"]).fields["tone"] == "auto"
    assert parse_args(["x.jpg", "--tone", "off"]).fields["tone"] == "off"


def test_ui_shows_the_decision_and_compares_with_the_original(stack, monkeypatch, originals):
    from streamlit.testing.v1 import AppTest

    from tests.test_ui import APP, restore
    monkeypatch.setenv("GATEWAY_URL", stack.url("gateway"))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    upload = jpeg_of(faded8(originals["coffee"][::4, ::4]), quality=95)
    restore(at, "faded.jpg", upload, colorize="off")
    deadline = time.monotonic() + 300
    while at.session_state["last_status"]["state"] not in ("done", "failed") and time.monotonic() < deadline:
        at.run()
    result = at.session_state["result"]
    assert result["original"] == upload       # the before/after slider's "before" is the upload itself
    measured = tone_decision(result["headers"])
    assert measured is not None and measured["decision"] == "corrected"
    assert describe(measured) in [e.value for e in at.info]
    assert describe(measured).startswith("Tone corrected levels and colour balance")
