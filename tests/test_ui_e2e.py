"""The UI end to end in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Streamlit runs as a subprocess on a free port, pointed at the test stack's gateway. The test uploads a real
photo, runs simple mode, checks the result is displayed, moves the sharpness slider, downloads the finished
image and saves a screenshot to artifacts/ui-e2e.png. On a 2 MP result it then checks that the finishing panel
(a custom component computing the preview in the page, ui/finishing_component) draws the same pixels as
ui/finishing.py, and measures inside Chromium how long a slider change takes to reach the canvas
(artifacts/ui-finishing-latency.json, screenshot artifacts/ui-finishing.png). Playwright never downloads a
browser here: it launches the system Chromium.
"""
from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ARTIFACTS, ROOT, free_port
from tests.helpers import decode_rgb, psnr
from ui import finishing

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PHOTO = "small-0014.jpg"   # a real old photo, small enough for CPU model stages


@pytest.fixture(scope="module")
def ui_url(stack):
    port = free_port()
    env = dict(os.environ, GATEWAY_URL=stack.url("gateway"), PYTHONPATH=str(ROOT))
    log = open(ARTIFACTS / "logs" / "ui.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"),
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.headless", "true", "--browser.gatherUsageStats", "false",
                             "--client.toolbarMode", "minimal"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, "streamlit exited; see artifacts/logs/ui.log"
            try:
                if httpx.get(url + "/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail("streamlit did not become healthy in 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it in .ci/run)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def wait_idle(page) -> None:
    """Wait until the Streamlit script is not running (clicks during a rerun can be lost)."""
    page.locator("[data-testid=stApp][data-test-script-state=notRunning]").wait_for()


PANEL = "iframe[data-testid=stCustomComponentV1]"     # the finishing panel (ui/finishing_component)
SETTINGS = {"blur_sigma": 0.8, "sharpen_amount": 1.5, "sharpen_radius": 2.0, "sharpen_threshold": 3.0}


def panel_frame(page):
    """The finishing panel's frame once its preview image is decoded and drawn."""
    handle = page.locator(PANEL).element_handle()
    frame = handle.content_frame()
    frame.wait_for_function("() => window.__finish && window.__finish.ready && window.__finish.frames.length > 0")
    return frame


def canvas_rgb(frame) -> np.ndarray:
    """The preview canvas's pixels (lossless PNG from toDataURL)."""
    url = frame.evaluate("() => document.getElementById('after').toDataURL('image/png')")
    return decode_rgb(base64.b64decode(url.split(",", 1)[1]))[:, :, :3]


def set_sliders(frame, settings: dict[str, float]) -> None:
    """Move the panel's sliders as a user would (value + input event) and wait for the frame that shows them."""
    frame.evaluate("""settings => { for (const [key, value] of Object.entries(settings)) {
        const input = document.getElementById('s_' + key); input.value = value;
        input.dispatchEvent(new Event('input', {bubbles: true})); input.dispatchEvent(new Event('change')); } }""",
                   settings)
    frame.wait_for_function("""settings => { const f = window.__finish.frames.at(-1);
        return f && Object.entries(settings).every(([k, v]) => Math.abs(f.settings[k] - v) < 1e-9); }""",
                            arg=settings, polling="raf")


def key_latencies(page, frame, slider: str, presses: int, key: str = "ArrowRight") -> list[dict]:
    """Press a key on a focused panel slider ``presses`` times, each after the previous change is drawn;
    the page's own records (performance.now(): input event -> canvas redrawn / next frame) for each."""
    frame.locator(f"#s_{slider}").focus()
    records = []
    for _ in range(presses):
        count = frame.evaluate("() => window.__finish.frames.length")
        page.keyboard.press(key)
        frame.wait_for_function("n => window.__finish.frames.length > n && "
                                "window.__finish.frames.at(-1).input_to_next_frame_ms !== undefined",
                                arg=count, polling="raf")
        records.append(frame.evaluate("() => window.__finish.frames.at(-1)"))
    return records


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 1),
            "max_ms": round(ordered[-1], 1)}


def test_simple_mode_in_a_real_browser(ui_url, browser, shared_images: Path, tmp_path: Path):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1800}, accept_downloads=True)
    page.set_default_timeout(60_000)
    try:
        run_simple_mode(page, ui_url, shared_images, tmp_path)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "ui-e2e-failure.png"), full_page=True)
        raise
    finally:
        page.close()


def run_simple_mode(page, ui_url: str, shared_images: Path, tmp_path: Path) -> None:
    page.goto(ui_url)
    page.get_by_role("heading", name="Old-photo restoration").wait_for()

    page.locator("input[type=file]").set_input_files(str(shared_images / PHOTO))
    page.get_by_text(f"{PHOTO}: 179×179 px").wait_for()    # the server has the upload
    wait_idle(page)
    page.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("Restored in").wait_for(timeout=300_000)

    # the result is shown in the finishing panel: the restored photo drawn on the canvas, the original under it
    frame = panel_frame(page)
    assert frame.locator("#after").evaluate("c => c.width") == 179
    assert frame.locator("#before").evaluate("img => img.complete && img.naturalWidth") == 179
    frame.get_by_text("Restored image 179×179 px").wait_for()

    # move the sharpness slider with the keyboard: the preview changes in the page, then Python gets the value
    plain = canvas_rgb(frame)
    thumb = frame.get_by_role("slider", name="Sharpness (amount)")
    thumb.focus()
    for _ in range(2):
        page.keyboard.press("ArrowRight")
    assert thumb.input_value() == "0.1"
    frame.wait_for_function("() => window.__finish.frames.at(-1).settings.sharpen_amount === 0.1", polling="raf")
    assert (canvas_rgb(frame) != plain).any()
    page.get_by_text("sharpness 0.10 (radius 1.0 px").wait_for()     # the value reached the server
    wait_idle(page)

    # download the full-size finished image
    page.get_by_role("button", name="Apply to the full image").click()
    download_button = page.get_by_role("button", name="Download PNG")
    download_button.wait_for()
    with page.expect_download() as info:
        download_button.click()
    target = tmp_path / "restored.png"
    info.value.save_as(target)
    with Image.open(io.BytesIO(target.read_bytes())) as im:
        assert im.format == "PNG" and im.size == (179, 179)
    page.screenshot(path=str(ARTIFACTS / "ui-e2e.png"), full_page=True)

    # the preview latency the user sees for a 2 MP result (advanced mode, one quick stage, so no model runs)
    big = tmp_path / "big.png"
    with Image.open(shared_images / "ost-009.png") as im:
        im.convert("RGB").resize((1155, 1650), Image.LANCZOS).save(big)     # 1.9 MP
    page.goto(ui_url)       # a new session: the uploader takes several photos, this one must be alone
    page.get_by_role("heading", name="Old-photo restoration").wait_for()
    wait_idle(page)
    page.get_by_text("Advanced", exact=True).click()
    page.locator("[data-testid=stSelectbox]").filter(has_text="Stage").click()
    page.get_by_role("option", name="sharpen", exact=True).click()
    page.get_by_role("button", name="Add stage").click()
    page.get_by_text("1. sharpen").wait_for()
    page.locator("input[type=file]").set_input_files(str(big))
    page.get_by_text("big.png: 1155×1650 px").wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Restore", exact=True).click()
    page.frame_locator(PANEL).get_by_text("Restored image 1155×1650 px").wait_for(
        timeout=int(os.environ.get("E2E_WAIT_MS", "120000")))
    wait_idle(page)
    frame = panel_frame(page)
    width, height = frame.evaluate("() => [document.getElementById('after').width, "
                                   "document.getElementById('after').height]")
    assert max(width, height) == finishing.PREVIEW_MAX_SIDE

    # the page's maths equals ui/finishing.py: at the neutral settings the canvas holds the preview copy
    # itself; the same settings applied in Python and in the page give the same picture
    set_sliders(frame, finishing.DEFAULTS)
    source = canvas_rgb(frame)
    scale = finishing.PREVIEW_MAX_SIDE / 1650                # as finishing.fit computes it
    base = finishing.PreviewBase(source.astype(np.float32) / 255, scale, (1155, 1650))
    set_sliders(frame, SETTINGS)
    in_page = canvas_rgb(frame)
    agreement = psnr(in_page, finishing.preview(base, SETTINGS))
    assert agreement >= 40, agreement
    assert psnr(in_page, source) < 40            # and the settings really changed the picture
    set_sliders(frame, finishing.DEFAULTS)
    assert np.array_equal(canvas_rgb(frame), source)

    # latency inside Chromium: slider input event -> canvas redrawn, for key presses on the sharpness slider
    sharp = key_latencies(page, frame, "sharpen_amount", 24)
    radius = key_latencies(page, frame, "sharpen_radius", 6)
    blur = key_latencies(page, frame, "blur_sigma", 6)
    result = {
        "sharpness": {"input_to_drawn": summary([r["input_to_drawn_ms"] for r in sharp]),
                      "input_to_next_frame": summary([r["input_to_next_frame_ms"] for r in sharp]),
                      "compute": summary([r["compute_ms"] for r in sharp])},
        "radius": {"input_to_drawn": summary([r["input_to_drawn_ms"] for r in radius])},
        "blur (with sharpening on)": {"input_to_drawn": summary([r["input_to_drawn_ms"] for r in blur])},
        "maths_psnr_db": round(agreement, 1), "settings_checked": SETTINGS,
        "preview": f"{width}x{height}", "result": "1155x1650 (1.9 MP)",
        "note": "performance.now() inside the finishing panel: from the slider's input event (event.timeStamp) to "
                "putImageData done (input_to_drawn) and to the next animation frame (input_to_next_frame); "
                "headless Chromium --disable-gpu on this host, no server round trip",
    }
    (ARTIFACTS / "ui-finishing-latency.json").write_text(json.dumps(result, indent=1))
    page.locator(PANEL).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "ui-finishing.png"), full_page=True)
    assert result["sharpness"]["input_to_drawn"]["median_ms"] < 100, result
    assert result["sharpness"]["input_to_drawn"]["p95_ms"] < 400, result
    # the settings the user ended on reach the server for the full-size download
    final = sharp[-1]["settings"]
    page.get_by_text(f"sharpness {final['sharpen_amount']:.2f}").wait_for()


# ------------------------------------------------------------------------------------------------- screens
SCREENS = ARTIFACTS / "ui"


def shot(page, name: str) -> None:
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / f"{name}.png"), full_page=True)


@pytest.fixture()
def page(ui_url, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1900}, accept_downloads=True)
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(ui_url)
    page.get_by_role("heading", name="Old-photo restoration").wait_for()
    wait_idle(page)
    yield page
    page.close()
    assert not errors, errors


def gateway_stages(stack) -> dict:
    return httpx.get(stack.url("gateway") + "/v1/stages", timeout=30).json()


def warm_up(stack, path: Path, **fields) -> None:
    """One restore through the jobs API, so every stage of the chain has reported its throughput."""
    http = httpx.Client(base_url=stack.url("gateway"), timeout=60)
    job = http.post("/v1/jobs", files={"image": (path.name, path.read_bytes())},
                    data={"mode": "simple", "colorize": "auto", "upscale": "none", **fields}).json()
    deadline = time.monotonic() + 300
    while http.get(f"/v1/jobs/{job['id']}").json()["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def refresh_server_panel(page) -> None:
    """Open the Server panel and press Refresh (the stage list, with the stages' speed, is cached for 10 s)."""
    page.get_by_text("Server", exact=True).click()
    page.get_by_role("button", name="Refresh").click()
    wait_idle(page)


def test_plain_messages_estimate_and_progress(page, stack, shared_images: Path):
    """A gray photo where stages are missing: the estimate before the run, plain sentences after it, and the
    operator's details only in the collapsed Server panel; no Deploy button."""
    from ui import plain
    assert page.title() == "Old-photo restoration"
    assert page.get_by_role("button", name="Deploy").count() == 0
    shot(page, "01-start")
    stages = gateway_stages(stack)
    chain = [s for s in ("denoise", "deblur", "colorize", "post-denoise", "sharpen")]
    missing = [s for s in chain if stages["services"][stages["steps"][s]["service"]]["status"] != "ok"]
    fetch_commands = [m["fetch_command"] for e in stages["services"].values()
                      for m in e.get("info", {}).get("models", {}).values()
                      if not m.get("available") and m.get("fetch_command")]
    photo = shared_images / "wolf-gray.jpg"
    warm_up(stack, photo)
    refresh_server_panel(page)
    for command in fetch_commands[:1]:
        page.get_by_text(command).first.wait_for()          # in the opened Server panel
    shot(page, "02-server-panel")
    page.get_by_text("Server", exact=True).click()           # collapse it again
    for command in fetch_commands:
        expect_hidden(page, command)

    page.locator("input[type=file]").set_input_files(str(photo))
    page.get_by_text("wolf-gray.jpg: 236×236 px").wait_for()
    wait_idle(page)
    estimate_text = page.get_by_text("Estimated time for this photo:")
    estimate_text.wait_for()
    assert "no estimate yet" not in estimate_text.inner_text()
    if missing:
        page.get_by_text(plain.missing_steps_note(missing)).wait_for()
    # what deblur will do with this (sharp) photo, asked from the gateway's /v1/decisions before the run
    page.get_by_text(plain.decision_sentences({"deblur": "sharp"})[0]).wait_for()
    shot(page, "03-estimate-before-restore")

    page.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("Restored in").wait_for(timeout=300_000)
    for step in missing:
        page.get_by_text(plain.skipped_sentence(step, grayscale=True)).wait_for()
    if "colorize" in missing:
        page.get_by_text("Colorization is not installed on this server, so the photo was left in black and "
                         "white.").wait_for()
    body = page.locator("[data-testid=stMain]").inner_text()
    assert "fetch" not in body and "python -m" not in body and "model_unavailable" not in body
    panel_frame(page)
    shot(page, "04-result-and-plain-messages")


def expect_hidden(page, text: str) -> None:
    for locator in page.get_by_text(text).all():
        locator.wait_for(state="hidden")


def test_progress_shows_the_time_left(page, stack, shared_images: Path, tmp_path: Path):
    """While a longer restore runs (scratch and dust repair of a 2 MP photo: seconds, so that several of the
    UI's polls see it running), the progress bar names the step in plain words and the time left, from the
    estimate made before the run."""
    big, half = tmp_path / "big.png", tmp_path / "half.png"
    with Image.open(shared_images / "ost-009.png") as im:
        im.convert("RGB").resize((1180, 1690), Image.LANCZOS).save(big)
        im.convert("RGB").resize((590, 845), Image.LANCZOS).save(half)
    http = httpx.Client(base_url=stack.url("gateway"), timeout=60)
    for _ in range(2):  # a stage leaves its cold first request out of its throughput: the second one counts
        job = http.post("/v1/jobs", files={"image": ("half.png", half.read_bytes())},
                        data={"mode": "advanced", "stages": json.dumps([{"stage": "repair"}])}).json()
        while http.get(f"/v1/jobs/{job['id']}").json()["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.1)
    refresh_server_panel(page)
    page.get_by_text("Server", exact=True).click()
    page.get_by_text("Advanced", exact=True).click()
    page.locator("[data-testid=stSelectbox]").filter(has_text="Stage").click()
    page.get_by_role("option", name="repair", exact=True).click()
    page.get_by_role("button", name="Add stage").click()
    page.get_by_text("1. repair").wait_for()
    page.locator("input[type=file]").set_input_files(str(big))
    page.get_by_text("big.png: 1180×1690 px").wait_for()
    wait_idle(page)
    estimate_text = page.get_by_text("Estimated time for this photo:")
    estimate_text.wait_for()
    assert "no estimate yet" not in estimate_text.inner_text()
    page.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("Scratch and dust repair…", exact=False).filter(has_text=" left").first.wait_for(timeout=120_000)
    page.locator("[data-testid=stMain]").evaluate("e => e.scrollTo(0, 0)")
    shot(page, "05-running-with-time-left")
    page.get_by_text("Restored in").wait_for(timeout=300_000)


def test_preset_sets_the_sliders_and_the_preview_and_the_view_zooms(page, shared_images: Path):
    from ui import finishing
    page.get_by_text("Advanced", exact=True).click()
    page.locator("[data-testid=stSelectbox]").filter(has_text="Stage").click()
    page.get_by_role("option", name="denoise", exact=True).click()
    page.get_by_role("button", name="Add stage").click()
    page.get_by_text("1. denoise").wait_for()
    page.locator("input[type=file]").set_input_files(str(shared_images / "ost-009.png"))
    page.get_by_text("ost-009.png: 448×640 px").wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("Restored in").wait_for(timeout=300_000)
    frame = panel_frame(page)
    plain_pixels = canvas_rgb(frame)
    assert frame.evaluate("() => window.__finish.preset") == "None"

    portrait = finishing.PRESETS["Portrait"]
    frame.get_by_role("button", name="Portrait").click()
    frame.wait_for_function("""p => { const f = window.__finish.frames.at(-1);
        return Object.entries(p).every(([k, v]) => Math.abs(f.settings[k] - v) < 1e-9); }""", arg=portrait,
                            polling="raf")
    for key, value in portrait.items():
        assert float(frame.locator(f"#s_{key}").input_value()) == pytest.approx(value)
    assert frame.get_by_role("button", name="Portrait").get_attribute("aria-pressed") == "true"
    portrait_pixels = canvas_rgb(frame)
    assert psnr(portrait_pixels, plain_pixels) < 45          # the preview changed
    page.get_by_text("extra blur 0.6 px, sharpness 0.35 (radius 1.5 px, threshold 4.0)").wait_for()
    shot(page, "06-preset-portrait")

    # the sliders stay adjustable: one more step of sharpness, and the preset is no longer marked
    frame.locator("#s_sharpen_amount").focus()
    page.keyboard.press("ArrowRight")
    frame.wait_for_function("() => window.__finish.frames.at(-1).settings.sharpen_amount === 0.4", polling="raf")
    assert frame.evaluate("() => window.__finish.preset") is None
    assert (canvas_rgb(frame) != portrait_pixels).any()
    page.get_by_text("sharpness 0.40").wait_for()
    frame.get_by_role("button", name="Document / print").click()
    page.get_by_text("sharpness 1.50 (radius 0.7 px").wait_for()
    wait_idle(page)

    # page-wide view, and 100 %: one photo pixel per CSS pixel
    fit_width = frame.locator("#cmp").evaluate("e => e.getBoundingClientRect().width")
    assert fit_width > 448       # the whole photo is shown larger than its 448 px, across the page
    page.get_by_text("100 % (actual pixels)").click()
    wait_idle(page)
    frame = panel_frame(page)
    frame.get_by_text("at 100 %", exact=False).wait_for()
    canvas_width = frame.locator("#after").evaluate("c => c.width")
    css_width = frame.locator("#cmp").evaluate("e => e.getBoundingClientRect().width")
    assert css_width == pytest.approx(canvas_width, abs=1)
    # the preset chosen before is still applied in the 100 % view
    assert frame.evaluate("() => window.__finish.frames.at(-1).settings.sharpen_amount") == 1.5
    shot(page, "07-view-100-percent")


def test_batch_of_three_with_a_broken_file(page, shared_images: Path, tmp_path: Path):
    broken = tmp_path / "broken.jpg"
    data = (shared_images / "small-0014.jpg").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    files = [shared_images / "small-0014.jpg", broken, shared_images / "wolf-gray.jpg"]
    page.locator("input[type=file]").set_input_files([str(f) for f in files])
    page.get_by_text("3 photos: small-0014.jpg, broken.jpg, wolf-gray.jpg").wait_for()
    wait_idle(page)
    page.get_by_text("Estimated time for these 3 photos").wait_for()
    page.get_by_role("button", name="Restore", exact=True).click()
    page.get_by_text("2 of 3 photos restored.").wait_for(timeout=300_000)
    page.get_by_text("broken.jpg: This file could not be read as a photo").wait_for()
    button = page.get_by_role("button", name="Download all (2 photos, zip", exact=False)
    with page.expect_download() as info:
        button.click()
    target = tmp_path / "restored.zip"
    info.value.save_as(target)
    import zipfile
    with zipfile.ZipFile(target) as archive:
        assert sorted(archive.namelist()) == ["small-0014.png", "wolf-gray.png"]
        with Image.open(io.BytesIO(archive.read("small-0014.png"))) as im:
            assert im.format == "PNG" and im.size == (179, 179)
        with Image.open(io.BytesIO(archive.read("wolf-gray.png"))) as im:
            assert im.size == (236, 236)
    page.get_by_text("Rows").click()
    shot(page, "08-batch-done")
