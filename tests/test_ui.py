"""The Streamlit UI's logic with AppTest, against the real stack (every call goes to the gateway over HTTP)."""
from __future__ import annotations

import ast
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.helpers import decode_rgb, jpeg_of, photo, psnr
from ui import finishing, plain

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "ui" / "app.py")
SIMPLE_CHAIN = ("repair", "denoise", "deblur", "tone", "colorize", "upscale", "post-denoise", "sharpen")
TIMEOUT = 300   # a real model stage on CPU, when its weights are provisioned


@pytest.fixture()
def app(stack, monkeypatch) -> AppTest:
    monkeypatch.setenv("GATEWAY_URL", stack.url("gateway"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def stages(stack) -> dict:
    return httpx.get(stack.url("gateway") + "/v1/stages", timeout=30).json()


def unusable_steps(stages: dict, steps) -> set[str]:
    return {s for s in steps if stages["services"][stages["steps"][s]["service"]]["status"] != "ok"}


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def restore(at: AppTest, name: str, data: bytes, mime: str = "image/jpeg", **choices) -> AppTest:
    at.file_uploader(key="upload").set_value((name, data, mime))
    for key, value in choices.items():
        at.selectbox(key=key).set_value(value)
    at.run()
    at.button(key="restore").click().run()
    assert not at.exception, at.exception
    return at


def test_ui_talks_to_the_gateway_only():
    """The UI never imports a stage, the gateway or the stages' shared image code."""
    for path in (ROOT / "ui").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                assert not name.split(".")[0] in ("services", "shared", "gateway"), f"{path} imports {name}"


def test_server_details_are_in_one_collapsed_panel(app: AppTest, stages: dict):
    """Services, models and fetch commands are in the sidebar's "Server" panel, and nowhere else."""
    assert [e.label for e in app.sidebar.expander] == ["Server"]
    panel = " ".join(texts(app.sidebar.expander[0].markdown))
    for service, entry in stages["services"].items():
        expected = "ready" if entry["status"] == "ok" else ("down" if entry["status"] == "down" else "not installed")
        assert f"**{service}**: {expected}" in panel, (service, panel)
        for model, spec in entry["info"].get("models", {}).items():
            mark = "installed" if spec["available"] else "not installed"
            assert f"`{model}`" in panel and mark in panel, model
            if not spec["available"] and spec.get("fetch_command"):
                assert spec["fetch_command"] in panel
    main = " ".join(texts(app.main.markdown) + texts(app.main.info) + texts(app.main.caption))
    assert "fetch" not in main and "python -m" not in main


def test_simple_mode_restores_and_says_what_was_skipped_plainly(app: AppTest, stages: dict):
    missing = unusable_steps(stages, [s for s in SIMPLE_CHAIN if s not in ("colorize", "upscale")])
    app.selectbox(key="colorize").set_value("off").run()
    notice = " ".join(texts(app.info))
    for step in missing:   # announced before running, in plain words
        assert plain.stage_name(step).lower() in notice and "not installed" in notice
    small = photo("coffee")[::8, ::8]       # 75 x 50: model stages on a CPU stay quick
    restore(app, "coffee.jpg", jpeg_of(small))
    status = app.session_state["last_status"]
    assert status["state"] == "done"
    assert status["stages"] == [s for s in SIMPLE_CHAIN if s not in ("colorize", "upscale")]
    assert {s["stage"] for s in status["skipped"]} == missing
    warnings = texts(app.warning)
    for skipped in status["skipped"]:
        assert plain.skipped_sentence(skipped["stage"], grayscale=False) in warnings
        assert skipped["reason"] not in " ".join(warnings)       # the operator's message is not shown
    assert "fetch" not in " ".join(warnings)
    assert any(t.startswith("Restored in") for t in texts(app.success))
    assert decode_rgb(app.session_state["result"]["png"]).shape[:2] == small.shape[:2]


def test_plain_sentences():
    assert plain.skipped_sentence("colorize") == ("Colorization is not installed on this server, so the photo was "
                                                  "left in black and white.")
    assert "keeps its own colours" in plain.skipped_sentence("colorize", grayscale=False)
    assert plain.skipped_sentence("upscale").startswith("Enlarging is not installed")
    assert "Noise reduction" in plain.skipped_sentence("denoise", "stage_unreachable")
    assert plain.skipped_sentence("new-step") == "New step is not installed on this server, so this step was skipped."
    assert "could not be read" in plain.error_sentence("corrupt_image", "corrupt image: broken data streams")
    assert plain.error_sentence("model_unavailable", "Fetch it with: python -m x", "deblur").startswith(
        "Blur removal failed.")
    assert plain.missing_steps_note(["deblur", "colorize"]) == (
        "On this server blur removal and colorization are not installed; those steps will be skipped.")


def test_corrupt_upload_gives_a_clear_error(app: AppTest, shared_images: Path):
    data = (shared_images / "small-0014.jpg").read_bytes()
    restore(app, "broken.jpg", data[: len(data) // 3])
    errors = " ".join(texts(app.error))
    assert "could not be read as a photo" in errors
    details = " ".join(texts(app.caption))
    assert "corrupt" in details and "HTTP 400" in details
    assert "result" not in app.session_state


def test_advanced_mode_widgets_come_from_the_served_schema(app: AppTest, stages: dict):
    app.radio(key="mode").set_value("Advanced").run()
    for step in stages["steps"]:
        app.selectbox(key="adv_add_stage").set_value(step)
        app.button(key="adv_add").click().run()
    chain = app.session_state["chain"]
    assert [e["stage"] for e in chain] == list(stages["steps"])
    keys = {w.key for w in app.main.get("slider") + app.main.get("number_input") + app.main.get("selectbox")
            + app.main.get("checkbox") + app.main.get("text_input")}
    for entry in chain:
        step = stages["steps"][entry["stage"]]
        info = stages["services"][step["service"]].get("info", {})
        for spec in info.get("params", []):
            key = f"p_{entry['uid']}__{spec['name']}"
            if spec["name"] in step["pinned_params"]:
                assert key not in keys
            else:
                assert key in keys or key + "__auto" in keys, key


def test_advanced_mode_order_params_and_run(app: AppTest, stages: dict):
    app.radio(key="mode").set_value("Advanced").run()
    for step in ("sharpen", "denoise"):
        app.selectbox(key="adv_add_stage").set_value(step)
        app.button(key="adv_add").click().run()
    first, second = app.session_state["chain"]
    app.button(key=f"down_{first['uid']}").click().run()       # now denoise, sharpen
    assert [e["stage"] for e in app.session_state["chain"]] == ["denoise", "sharpen"]
    app.slider(key=f"p_{first['uid']}__sharpen_amount").set_value(2.0)
    app.slider(key=f"p_{second['uid']}__strength").set_value(0.5)
    image = photo("coffee")[::4, ::4]
    restore(app, "coffee.jpg", jpeg_of(image))
    status = app.session_state["last_status"]
    assert status["state"] == "done" and status["stages"] == ["denoise", "sharpen"]
    assert [d["stage"] for d in status["stages_done"]] == ["denoise", "sharpen"]
    request = [c.value for c in app.code if "sharpen_amount" in c.value][0]
    assert '"strength": 0.5' in request and '"sharpen_amount": 2.0' in request


def test_advanced_invalid_param_is_reported(app: AppTest, stages: dict):
    """An unavailable model stage in advanced mode fails with a clear message (or runs, when installed)."""
    app.radio(key="mode").set_value("Advanced").run()
    app.selectbox(key="adv_add_stage").set_value("deblur")
    app.button(key="adv_add").click().run()
    restore(app, "coffee.jpg", jpeg_of(photo("coffee")[::8, ::8]))
    status = app.session_state["last_status"]
    if stages["services"]["deblur"]["status"] == "ok":
        assert status["state"] == "done"
    else:
        assert status["state"] == "failed"
        errors = " ".join(texts(app.error))
        assert "Blur removal failed" in errors and "not installed" in errors
        assert "model_unavailable" in " ".join(texts(app.caption)) and "fetch" not in errors


def test_widgets_for_a_new_parameter_need_no_ui_change():
    def page():
        import json

        import streamlit as st

        from ui import widgets
        schema = [
            {"name": "new_knob", "type": "float", "default": 0.5, "description": "", "minimum": 0.0, "maximum": 2.0},
            {"name": "passes", "type": "int", "default": 2, "description": "", "minimum": 1},
            {"name": "fast", "type": "bool", "default": False, "description": ""},
            {"name": "model", "type": "enum", "default": None, "nullable": True, "choices": ["a", "b"],
             "description": ""},
            {"name": "sigma", "type": "float", "default": None, "nullable": True, "minimum": 0.0, "maximum": 50.0,
             "description": ""},
            {"name": "region", "type": "box", "default": [0, 0, 1, 1], "description": ""},
        ]
        st.session_state["chosen"] = json.dumps(widgets.params_form(schema, "t"))

    at = AppTest.from_function(page)
    at.run()
    assert at.session_state["chosen"] == "{}"      # defaults are left to the stage
    at.slider(key="t__new_knob").set_value(1.25)
    at.number_input(key="t__passes").set_value(3)
    at.checkbox(key="t__fast").check()
    at.selectbox(key="t__model").set_value("b")
    at.checkbox(key="t__sigma__auto").uncheck().run()
    at.slider(key="t__sigma").set_value(12.0)
    at.text_input(key="t__region").input("[0, 0, 0.5, 0.5]").run()
    import json
    assert json.loads(at.session_state["chosen"]) == {"new_knob": 1.25, "passes": 3, "fast": True, "model": "b",
                                                      "sigma": 12.0, "region": [0, 0, 0.5, 0.5]}


def test_preview_matches_the_gateway_finish(stack):
    """At 100 % the UI's local preview equals what /v1/finish does to the full image."""
    image = photo("astronaut")[::2, ::2]
    png = Image.fromarray(image)
    buf = io.BytesIO()
    png.save(buf, "PNG")
    settings = {"blur_sigma": 0.8, "sharpen_amount": 1.5, "sharpen_radius": 2.0, "sharpen_threshold": 3.0}
    response = httpx.post(stack.url("gateway") + "/v1/finish", files={"image": ("a.png", buf.getvalue())},
                          data={k: str(v) for k, v in settings.items()}, timeout=60)
    assert response.status_code == 200
    server = decode_rgb(response.content)
    local = finishing.preview(finishing.make_base(buf.getvalue(), max_side=4096), settings)
    assert local.shape == server.shape
    assert psnr(local, server) > 45
    assert psnr(local, image) < 40          # and the settings really changed the image


def test_finishing_sliders_and_download_keep_metadata(app: AppTest, shared_images: Path):
    original = (shared_images / "wolf-gray.jpg").read_bytes()
    with Image.open(io.BytesIO(original)) as im:
        exif, icc = im.getexif(), im.info["icc_profile"]
    app.radio(key="mode").set_value("Advanced").run()       # finishing does not depend on the mode
    app.selectbox(key="adv_add_stage").set_value("denoise")
    app.button(key="adv_add").click().run()
    restore(app, "wolf.jpg", original)
    assert app.session_state["last_status"]["state"] == "done"
    base, after_png, _ = app.session_state["previews"][(app.session_state["result"]["id"], False, None)]
    # the browser is sent exactly the pixels the Python preview finishes (lossless PNG)
    assert np.array_equal(decode_rgb(after_png), np.rint(base.rgb * 255).astype(np.uint8))
    plain = finishing.preview(base, app.session_state["preview_settings"])
    assert app.session_state["preview_settings"] == finishing.DEFAULTS
    # the browser panel sends its settings back as the component's value (out-of-range values are clamped)
    app.session_state["finish_ctl"] = {"sharpen_amount": 2.0, "blur_sigma": 0.0, "sharpen_radius": 9.0}
    app.run()
    assert app.session_state["preview_settings"] == {**finishing.DEFAULTS, "sharpen_amount": 2.0,
                                                     "sharpen_radius": 5.0}
    sharpened = finishing.preview(base, app.session_state["preview_settings"])
    assert np.abs(sharpened.astype(int) - plain).mean() > 0.5

    app.radio(key="dl_format").set_value("JPEG").run()
    app.slider(key="dl_quality").set_value(80).run()
    app.button(key="dl_prepare").click().run()
    assert not app.exception and not app.error
    download = app.session_state["download"]
    assert download["mime"] == "image/jpeg"
    assert app.get("download_button"), "the download button appears once the full image is finished"
    with Image.open(io.BytesIO(download["data"])) as out:
        assert out.format == "JPEG" and out.size == (236, 236)
        assert out.info.get("icc_profile") == icc
        kept = out.getexif()
        for tag in (0x010F, 0x0110, 0x0132):   # make, model, date time
            if tag in exif:
                assert kept.get(tag) == exif[tag]
        assert len(kept) >= len(exif) - 1
    # a changed slider invalidates the prepared file
    app.session_state["finish_ctl"] = {"sharpen_amount": 1.0, "sharpen_radius": 5.0}
    app.run()
    assert not app.get("download_button")


def test_decisions_read_as_plain_sentences():
    assert plain.decision_sentences({"deblur": "sharp"}) == [
        "This photo looks sharp, so blur removal will leave it as it is."]
    assert "most of the time" in plain.decision_sentences({"deblur": "motion"})[0]
    assert plain.decision_sentences({"deblur": "force"}) == []     # nothing worth saying
    assert plain.decision_sentences({}) == []
