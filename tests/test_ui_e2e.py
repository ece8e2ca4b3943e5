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
    page.get_by_text("Restored:").wait_for(timeout=300_000)

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
