"""Streamlit UI for the old-photo restoration service (port 8501), written for the people restoring photos.

Everything goes through the gateway's HTTP API (GATEWAY_URL, default http://127.0.0.1:8000): stage
availability and recent speed from /v1/stages, restores as async jobs (/v1/jobs) with per-stage progress and
a time estimate, the full-size finishing and download from /v1/finish. One photo opens the finishing view
(presets, sliders and a page-wide before/after view computed in the browser, ui/finishing_component);
several photos or a zip run as a batch with one progress row per photo and a zip of the results.
Operator details (services, models, fetch commands) live in the sidebar's collapsed "Server" panel.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run ui/app.py` puts only ui/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from ui import (estimate, finishing, live_preview, photos, plain, repair_review, server_panel, tone_panel,  # noqa: E402
                widgets)
from ui.gateway_client import (FINAL_STATES, Gateway, GatewayError, advanced_fields, gateway_url,  # noqa: E402
                               simple_fields)
from ui.server_panel import service_state  # noqa: E402

SIMPLE_CHAIN = estimate.SIMPLE_CHAIN
UPSCALE_CHOICES = ("none", "x2", "x4", "enhance", "custom")
UPSCALE_LABELS = {"none": "Keep the size", "x2": "2× larger", "x4": "4× larger",
                  "enhance": "Same size, more detail", "custom": "Other factor…"}
COLORIZE_LABELS = {"auto": "Only black-and-white photos", "on": "Always", "off": "Never"}
POLL_S = 0.25
BATCH_IN_FLIGHT = 4         # jobs submitted ahead; the rest wait here, not in the gateway's bounded queue
FINISH_KEY = "finish_ctl"   # the browser finishing panel's value: the chosen settings
VIEW_CHOICES = ("Whole photo", "100 % (actual pixels)")
# plain symbols and Material icons (bundled with Streamlit): no emoji font is needed in the browser
STATE_ICONS = {"done": ":green[✔]", "running": ":blue[►]", "skipped": ":orange[↷]", "failed": ":red[✖]",
               "pending": ":gray[○]", "cancelled": ":gray[■]"}
FINISH_SLIDERS = (  # key, label, min, max, step, help
    ("blur_sigma", "Extra blur (sigma, px)", 0.0, 5.0, 0.1, "Gaussian blur of the full-size image; 0 = off"),
    ("sharpen_amount", "Sharpness (amount)", 0.0, 3.0, 0.05, "unsharp-mask amount; 0 = off"),
    ("sharpen_radius", "Sharpen radius (px)", 0.3, 5.0, 0.1, "size of the detail that is sharpened"),
    ("sharpen_threshold", "Sharpen threshold (levels)", 0.0, 20.0, 0.5,
     "differences smaller than this are left alone, so flat areas and grain are not sharpened"),
)


@st.cache_resource
def get_gateway(url: str) -> Gateway:
    return Gateway(url)


@st.cache_data(ttl=10, show_spinner=False)
def fetch_stages(url: str) -> dict:
    return get_gateway(url).stages()


def show_error(error: GatewayError, prefix: str = "") -> None:
    """A gateway error in plain words, with the technical details one click away."""
    st.error(prefix + plain.error_sentence(error.code, error.message, error.stage), icon=":material/error:")
    with st.expander("Details"):
        st.caption(technical_details(error.code, error.message, error.stage, error.status))


def technical_details(code: str | None, message: str, stage: str | None, status: int | None = None) -> str:
    if code == "model_unavailable":   # the message carries the fetch command: that is for the Server panel
        message = "a model this step needs is not installed (see the Server panel)"
    where = f"stage {stage}: " if stage else ""
    http = f", HTTP {status}" if status else ""
    return f"{where}{message} ({code}{http})"


# ---------------------------------------------------------------------------------------------- controls

def usable_services(stages: dict | None) -> dict[str, bool]:
    return {s: service_state(stages, s)[0] for s in (stages or {}).get("services", {})}


def simple_controls(stages: dict | None) -> tuple[dict[str, str], list[tuple[str, dict]]]:
    """The simple-mode choices as the gateway's form fields, and the steps the gateway will run."""
    cols = st.columns(3)
    colorize = cols[0].selectbox("Colorize", ("auto", "on", "off"), key="colorize",
                                 format_func=COLORIZE_LABELS.get,
                                 help="Add colour to black-and-white photos")
    upscale = cols[1].selectbox("Size", UPSCALE_CHOICES, key="upscale", format_func=UPSCALE_LABELS.get,
                                help="Enlarge the photo, or restore more detail at the same size")
    if upscale == "custom":
        factor = cols[2].number_input("Enlarge by", min_value=1.1, max_value=8.0, value=1.5, step=0.1,
                                      key="upscale_factor")
        upscale = f"{factor:g}"
    steps = estimate.simple_steps(stages or {}, colorize, upscale)
    if stages is not None:
        missing = [s for s, _ in steps if not service_state(stages, stages["steps"].get(s, {}).get("service", s))[0]]
        if missing:
            st.info(plain.missing_steps_note(missing), icon=":material/info:")
    return simple_fields(colorize, upscale), steps


def _move(index: int, delta: int) -> None:
    chain = st.session_state["chain"]
    target = index + delta
    if 0 <= target < len(chain):
        chain[index], chain[target] = chain[target], chain[index]


def _remove(index: int) -> None:
    st.session_state["chain"].pop(index)


def _add(stage: str | None = None) -> None:
    stage = stage or st.session_state.get("adv_add_stage")
    if stage:
        st.session_state["chain"].append({"uid": uuid.uuid4().hex[:8], "stage": stage})


def _load_simple_chain() -> None:
    st.session_state["chain"] = [{"uid": uuid.uuid4().hex[:8], "stage": s} for s in SIMPLE_CHAIN
                                 if s not in ("colorize", "upscale")]


def advanced_controls(stages: dict | None) -> tuple[dict[str, str] | None, list[tuple[str, dict]]]:
    if stages is None:
        st.warning("Advanced mode needs the list of steps from the server.")
        return None, []
    chain = st.session_state.setdefault("chain", [])
    steps = stages.get("steps", {})
    add_cols = st.columns([3, 1, 2])
    add_cols[0].selectbox("Stage", list(steps), key="adv_add_stage",
                          format_func=lambda s: s + ("" if service_state(stages, steps[s]["service"])[0]
                                                     else " (not installed)"))
    add_cols[1].button("Add stage", key="adv_add", on_click=_add, use_container_width=True)
    add_cols[2].button("Start from the standard chain", key="adv_standard", on_click=_load_simple_chain)
    if not chain:
        st.caption("Add stages in the order they should run; any order is allowed.")
        return None, []
    payload = []
    for index, entry in enumerate(chain):
        stage, uid = entry["stage"], entry["uid"]
        service = steps.get(stage, {}).get("service", stage)
        usable, _ = service_state(stages, service)
        with st.expander(f"{index + 1}. {stage}" + ("" if usable else "  :orange[(not installed)]"), expanded=True):
            buttons = st.columns([1, 1, 1, 6])
            buttons[0].button("↑", key=f"up_{uid}", on_click=_move, args=(index, -1), disabled=index == 0)
            buttons[1].button("↓", key=f"down_{uid}", on_click=_move, args=(index, 1),
                              disabled=index == len(chain) - 1)
            buttons[2].button("✕", key=f"rm_{uid}", on_click=_remove, args=(index,))
            if not usable:
                st.warning(f"{plain.stage_name(stage)} is not installed on this server; in advanced mode the "
                           "restore stops at this step.")
            info = stages.get("services", {}).get(service, {}).get("info")
            if info is None:
                payload.append({"stage": stage, "params": {}})
                continue
            pinned = steps.get(stage, {}).get("pinned_params", {})
            params = widgets.params_form(info.get("params", []), f"p_{uid}", pinned)
            if pinned:
                st.caption("fixed by this step: " + ", ".join(f"{k}={v}" for k, v in pinned.items()))
            payload.append({"stage": stage, "params": params})
    with st.expander("Request (stages JSON)"):
        st.code(json.dumps(payload, indent=1), language="json")
    return advanced_fields(payload), estimate.advanced_steps(stages, payload)


# ---------------------------------------------------------------------------------------------- estimates

@st.cache_resource
def server_overhead() -> dict[str, estimate.Overhead]:
    """What the gateway adds to the stages' own times, learned from finished jobs (shared by all sessions:
    it is a property of the server)."""
    return {"value": estimate.Overhead()}


def learn_overhead(status: dict, headers: dict[str, str]) -> None:
    try:
        stage_times = json.loads(headers.get("x-stage-times") or "{}")
    except ValueError:
        return
    holder = server_overhead()
    holder["value"] = holder["value"].blend(estimate.Overhead.from_job(status, stage_times))


@st.cache_data(max_entries=64, show_spinner=False)
def photo_kind(data: bytes) -> str | None:
    return photos.input_kind(data)


@st.cache_data(max_entries=64, show_spinner=False, ttl=600)
def photo_decisions(url: str, data: bytes, name: str, fields_json: str) -> dict[str, str]:
    """What the photo-dependent steps will decide for this photo (deblur: sharp, defocus or motion), asked
    once per photo and choice: a sharp photo and a blurred one cost very different times."""
    try:
        return get_gateway(url).decisions(data, name, json.loads(fields_json))
    except GatewayError:
        return {}


def photo_plan(stages: dict | None, steps, photo: photos.Photo, mode: str,
               decisions: dict[str, str] | None = None) -> estimate.Plan | None:
    size = photo.size
    if stages is None or size is None or not steps:
        return None
    # simple mode skips a step that is not installed; advanced mode fails there instead
    return estimate.plan(stages, steps, size, usable_services(stages) if mode == "Simple" else None,
                         photo_kind(photo.data), server_overhead()["value"], decisions)


def render_estimate(plans: list[estimate.Plan | None], count: int) -> None:
    """Before Restore: how long this photo (or batch) should take on this server now."""
    known = [p for p in plans if p is not None]
    if not known:
        return
    total = sum(p.seconds for p in known)
    unknown = sorted({s for p in known for s in p.unknown})
    what = "this photo" if count == 1 else f"these {count} photos"
    text = f"Estimated time for {what}: {estimate.describe_seconds(total)}"
    if unknown:
        names = ", ".join(plain.stage_name(s).lower() for s in unknown)
        known_part = f"at least {estimate.describe_seconds(total)}" if total >= 1 else "not known yet"
        text = (f"Estimated time for {what}: {known_part} "
                f"(no estimate yet for {names}: this server has not done that since it started)")
    st.caption(text)
    st.session_state["estimate_shown"] = {"seconds": total, "unknown": unknown, "count": count}


# ---------------------------------------------------------------------------------------------- one photo

def stage_rows(status: dict) -> list[tuple[str, str, str]]:
    """(stage, state, note) for every stage of a job status, in chain order."""
    done = {d["stage"]: d for d in status.get("stages_done", [])}
    skipped = {s["stage"] for s in status.get("skipped", [])}
    error = status.get("error") or {}
    rows = []
    for name in status.get("stages", []):
        if name in done:
            rows.append((name, "done", f"{done[name]['ms'] / 1000:.1f} s"))
        elif name in skipped:
            rows.append((name, "skipped", "not installed"))
        elif status.get("state") == "failed" and (error.get("stage") == name or status.get("stage") == name):
            rows.append((name, "failed", ""))
        elif status.get("state") == "running" and status.get("stage") == name:
            rows.append((name, "running", ""))
        elif status.get("state") == "cancelled":
            rows.append((name, "cancelled", ""))
        else:
            rows.append((name, "pending", ""))
    return rows


def progress_text(status: dict, eta: estimate.Eta | None) -> str:
    state = status.get("state", "?")
    if state == "queued":
        return "Waiting for the server…"
    if state != "running":
        return state
    text = f"{plain.stage_name(status['stage'])}…" if status.get("stage") else "Working…"
    if eta is not None and eta.remaining is not None:
        text += f" {estimate.describe_seconds(eta.remaining)} left"
    return text


def job_eta(job: dict, status: dict) -> estimate.Eta | None:
    if job.get("plan") is None:
        return None
    if status.get("state") == "running" and job.get("running_since") is None:
        job["running_since"] = time.monotonic()
    running_for = time.monotonic() - job["running_since"] if job.get("running_since") else 0.0
    return estimate.eta(job["plan"], status, running_for)


def render_job(status: dict, container, eta: estimate.Eta | None = None) -> None:
    with container.container():
        fraction = eta.fraction if eta is not None else float(status.get("progress", 0))
        st.progress(min(1.0, fraction), text=progress_text(status, eta))
        lines = []
        for name, row_state, note in stage_rows(status):
            text = f"{STATE_ICONS[row_state]} **{plain.stage_name(name)}** {row_state}"
            if note and row_state != "skipped":
                text += f" ({note})"
            lines.append(text)
        st.markdown("  \n".join(lines) or "(no stages)")


def _cancel_job() -> None:
    job = st.session_state.get("job")
    if job:
        try:
            job["status"] = get_gateway(gateway_url()).cancel_job(job["id"])
        except GatewayError as exc:
            st.session_state["job_error"] = exc


def clear_outcomes() -> None:
    for stale in ("download", "job_error", "result", "last_status", "previews", "batch"):
        st.session_state.pop(stale, None)


def start_job(gw: Gateway, photo: photos.Photo, fields: dict[str, str], plan: estimate.Plan | None) -> None:
    clear_outcomes()
    try:
        status = gw.submit_job(photo.data, photo.name, fields)
    except GatewayError as exc:
        st.session_state["job_error"] = exc
        st.session_state["job"] = None
        return
    st.session_state["job"] = {"id": status["id"], "status": status, "original": photo.data, "name": photo.name,
                               "plan": plan, "running_since": None}


def follow_job(gw: Gateway) -> None:
    """Poll the active job, showing per-stage progress and the time left, until it reaches a final state."""
    job = st.session_state["job"]
    cancel_slot = st.empty()
    cancel_slot.button("Cancel", key="cancel", on_click=_cancel_job)
    placeholder = st.empty()
    status = job["status"]
    while status.get("state") not in FINAL_STATES:
        render_job(status, placeholder, job_eta(job, status))
        time.sleep(POLL_S)
        try:
            status = gw.job(job["id"])
        except GatewayError as exc:
            st.session_state["job_error"] = exc
            st.session_state["job"] = None
            return
        job["status"] = status
    placeholder.empty()
    cancel_slot.empty()
    st.session_state["job"] = None
    st.session_state["last_status"] = status
    fetch_stages.clear()     # the stages' throughput now includes this run
    if status["state"] == "done":
        try:
            result = gw.job_result(job["id"])
        except GatewayError as exc:
            st.session_state["job_error"] = exc
            return
        learn_overhead(status, result.headers)
        st.session_state["result"] = {"id": job["id"], "png": result.image, "headers": result.headers,
                                      "original": job["original"], "name": job["name"], "status": status}
        st.session_state.pop("previews", None)
        st.session_state.pop("download", None)


def skipped_notes(skipped: list[dict], grayscale: bool | None) -> None:
    for entry in skipped:
        st.warning(plain.skipped_sentence(entry["stage"], plain.skipped_code(entry), grayscale=grayscale),
                   icon=":material/skip_next:")


def render_outcome(status: dict, original: bytes | None) -> None:
    """The end of a single restore: what ran, what was skipped and why, in plain words."""
    state = status["state"]
    if state == "done":
        ran = [plain.stage_name(d["stage"]).lower() for d in status.get("stages_done", [])]
        total = sum(d["ms"] for d in status.get("stages_done", [])) / 1000
        st.success(f"Restored in {total:.1f} s: {', '.join(ran) or 'nothing needed to run'}.",
                   icon=":material/check_circle:")
    elif state == "cancelled":
        st.warning("The restore was cancelled.", icon=":material/cancel:")
    elif state == "failed":
        error = status.get("error") or {}
        st.error("The restore failed. " + plain.error_sentence(error.get("code"), error.get("message", ""),
                                                                 error.get("stage")), icon=":material/error:")
        with st.expander("Details"):
            st.caption(technical_details(error.get("code"), error.get("message", ""), error.get("stage")))
    skipped_notes(status.get("skipped", []), photos.is_grayscale(original) if original else None)
    with st.expander("Steps", expanded=False):
        render_job(status, st)


def result_extras(result: dict) -> None:
    """What individual steps decided about this photo, shown under the result.

    Each step's display is one call here, with the result dict (``png``, ``original``, ``headers`` with the
    stages' forwarded X-* headers, ``status``), e.g. a tone decision or a repair mask overlay.
    """
    tone_panel.render_tone_decision(result, st)


# ---------------------------------------------------------------------------------------------- finishing

def finish_settings() -> dict[str, float]:
    """The settings the browser panel last sent back (the defaults until the user moves a slider)."""
    return live_preview.clean(st.session_state.get(FINISH_KEY), FINISH_SLIDERS)


def preview_sources(result: dict, pixels: bool, centre: tuple[float, float]
                    ) -> tuple[finishing.PreviewBase, bytes, bytes]:
    """Screen-sized copies of the result (PNG, finished live in the browser) and of the original (before)."""
    cache = st.session_state.setdefault("previews", {})
    key = (result["id"], pixels, centre if pixels else None)
    if key not in cache:
        after = finishing.make_base(result["png"], crop=pixels, centre=centre)
        before_full = finishing.decode_rgb8(result["original"], orient=True)
        before_full = finishing.resize_to(before_full, after.full_size)
        before = finishing.make_base_from_rgb8(before_full, crop=pixels, centre=centre)
        cache.clear()    # one view at a time: a 100 % view of a big result is large
        cache[key] = (after, live_preview.png_of_base(after), finishing.to_jpeg(finishing.preview(before, {})))
    return cache[key]


@st.fragment
def finishing_panel() -> None:
    """Presets, sliders and the page-wide before/after view run in the browser (ui/finishing_component): a
    slider change is drawn there without a server round trip; the chosen settings come back here."""
    result = st.session_state.get("result")
    if not result:
        return
    st.subheader("Result and finishing")
    cols = st.columns([2, 3])
    view = cols[0].radio("View", VIEW_CHOICES, key="zoom", horizontal=True,
                         help="The whole photo fitted to the page, or a part of it at 100 % (one photo pixel per "
                              "screen pixel)")
    pixels = view != VIEW_CHOICES[0]
    centre = (0.5, 0.5)
    if pixels:
        pos = cols[1].columns(2)
        centre = (pos[0].slider("Across", 0, 100, 50, 5, key="zoom_x", format="%d%%") / 100,
                  pos[1].slider("Down", 0, 100, 50, 5, key="zoom_y", format="%d%%") / 100)
    base, after_png, before_jpeg = preview_sources(result, pixels, centre)
    settings = live_preview.finishing_preview(
        image_png=after_png, before_jpeg=before_jpeg, image_id=f"{result['id']}/{pixels}/{centre}",
        scale=base.scale, full_size=base.full_size, settings=finish_settings(), sliders=FINISH_SLIDERS,
        key=FINISH_KEY, pixels=pixels)
    st.session_state["preview_settings"] = settings
    download_panel(result, settings)


def download_panel(result: dict, settings: dict[str, float]) -> None:
    st.subheader("Download")
    cols = st.columns([1, 1, 2])
    fmt = cols[0].radio("Format", ("PNG", "JPEG"), key="dl_format", horizontal=True)
    quality = cols[1].slider("JPEG quality", 50, 100, 92, key="dl_quality", disabled=fmt != "JPEG")
    wanted = (result["id"], tuple(sorted(settings.items())), fmt, quality if fmt == "JPEG" else None)
    prepared = st.session_state.get("download")
    if cols[2].button("Apply to the full image", key="dl_prepare", type="primary"):
        try:
            with st.spinner("Finishing the full-size image…"):
                out = get_gateway(gateway_url()).finish(result["png"], settings, fmt.lower(), quality)
            prepared = {"key": wanted, "data": out.image, "mime": out.media_type}
            st.session_state["download"] = prepared
        except GatewayError as exc:
            show_error(exc, "Finishing failed: ")
            prepared = None
    if prepared and prepared["key"] == wanted:
        stem = Path(result["name"]).stem or "photo"
        ext = "png" if fmt == "PNG" else "jpg"
        cols[2].download_button(f"Download {fmt} ({len(prepared['data']) / 1e6:.1f} MB)", prepared["data"],
                                file_name=f"{stem}-restored.{ext}", mime=prepared["mime"], key="dl_download",
                                on_click="ignore")
    elif prepared:
        cols[2].caption("Settings changed: apply again to download.")
    else:
        cols[2].caption("Applies the sliders to the full-size image; EXIF and ICC profile are kept.")
    st.caption(f"Settings for the full image: {describe_settings(settings)}")


def describe_settings(settings: dict[str, float]) -> str:
    return (f"extra blur {settings['blur_sigma']:.1f} px, sharpness {settings['sharpen_amount']:.2f} "
            f"(radius {settings['sharpen_radius']:.1f} px, threshold {settings['sharpen_threshold']:.1f})")


# ---------------------------------------------------------------------------------------------- batches

def start_batch(items: list[photos.Photo], plans: list[estimate.Plan | None], fields: dict[str, str]) -> None:
    clear_outcomes()
    names = photos.result_names([p.name for p in items])
    st.session_state["batch"] = {"fields": fields, "items": [
        {"name": p.name, "result_name": n, "data": p.data, "plan": plan, "job": None, "status": None,
         "error": None, "png": None, "running_since": None}
        for p, n, plan in zip(items, names, plans)]}


def _cancel_batch() -> None:
    batch = st.session_state.get("batch")
    if not batch:
        return
    gw = get_gateway(gateway_url())
    for item in batch["items"]:
        if item["error"] or (item["status"] or {}).get("state") in FINAL_STATES:
            continue
        if item["job"]:
            try:
                item["status"] = gw.cancel_job(item["job"])
            except GatewayError:
                pass
        else:
            item["status"] = {"state": "cancelled"}


def item_state(item: dict) -> str:
    if item["error"]:
        return "failed"
    return (item["status"] or {}).get("state", "waiting")


def batch_step(gw: Gateway, batch: dict) -> bool:
    """One polling round: submit waiting photos while there is room, poll the others; True when all are final."""
    in_flight = sum(item_state(i) in ("queued", "running") for i in batch["items"])
    for item in batch["items"]:
        state = item_state(item)
        if state == "waiting" and in_flight < BATCH_IN_FLIGHT:
            try:
                item["status"] = gw.submit_job(item["data"], item["name"], batch["fields"])
                item["job"] = item["status"]["id"]
                in_flight += 1
            except GatewayError as exc:
                if exc.code == "queue_full":      # the server is busy: this photo waits for the next round
                    continue
                item["error"] = {"code": exc.code, "message": exc.message, "stage": exc.stage}
        elif state in ("queued", "running"):
            try:
                item["status"] = gw.job(item["job"])
            except GatewayError as exc:
                item["error"] = {"code": exc.code, "message": exc.message, "stage": exc.stage}
                continue
            if item["status"]["state"] == "done":
                try:
                    result = gw.job_result(item["job"])
                    item["png"] = result.image
                    learn_overhead(item["status"], result.headers)
                except GatewayError as exc:
                    item["error"] = {"code": exc.code, "message": exc.message, "stage": exc.stage}
            elif item["status"]["state"] == "failed":
                item["error"] = item["status"].get("error") or {"code": "internal_error", "message": ""}
            if item_state(item) not in ("queued", "running"):
                in_flight -= 1
                item["data"] = b""     # the upload is no longer needed
    return all(item_state(i) in ("done", "failed", "cancelled") for i in batch["items"])


def render_batch_rows(batch: dict) -> None:
    remaining_total: float | None = 0.0
    for item in batch["items"]:
        state = item_state(item)
        status = item["status"] or {}
        if state == "done":
            total = sum(d["ms"] for d in status.get("stages_done", [])) / 1000
            st.progress(1.0, text=f"✔ {item['name']}: restored in {total:.1f} s")
        elif state == "failed":
            st.progress(0.0, text=f"✖ {item['name']}: failed")
        elif state == "cancelled":
            st.progress(0.0, text=f"■ {item['name']}: cancelled")
        else:
            eta = job_eta(item, status) if status else None
            if state == "waiting":
                text = f"○ {item['name']}: waiting"
                left = item["plan"].seconds if item["plan"] is not None and not item["plan"].unknown else None
            else:
                text = f"► {item['name']}: {progress_text(status, eta)}"
                left = eta.remaining if eta is not None else None
            if remaining_total is not None:
                remaining_total = None if left is None else remaining_total + left
            st.progress(eta.fraction if eta is not None else 0.0, text=text)
    if remaining_total:
        st.caption(f"All photos: {estimate.describe_seconds(remaining_total)} left")


def follow_batch(gw: Gateway) -> None:
    batch = st.session_state["batch"]
    cancel_slot = st.empty()
    cancel_slot.button("Cancel all", key="cancel_batch", on_click=_cancel_batch)
    placeholder = st.empty()
    while True:
        finished = batch_step(gw, batch)
        with placeholder.container():
            render_batch_rows(batch)
        if finished:
            break
        time.sleep(POLL_S)
    cancel_slot.empty()
    placeholder.empty()
    batch["finished"] = True
    fetch_stages.clear()


def render_batch_outcome(batch: dict) -> None:
    items = batch["items"]
    done = [i for i in items if item_state(i) == "done" and i["png"]]
    failed = [i for i in items if item_state(i) == "failed"]
    if done:
        st.success(f"{len(done)} of {len(items)} photos restored.", icon=":material/check_circle:")
        archive = photos.zip_of([(i["result_name"], i["png"]) for i in done])
        st.download_button(f"Download all ({len(done)} photos, zip, {len(archive) / 1e6:.1f} MB)", archive,
                           file_name="restored-photos.zip", mime="application/zip", key="batch_download",
                           on_click="ignore", type="primary")
    else:
        st.error("No photo could be restored.", icon=":material/error:")
    if failed:
        st.markdown("**Not restored:**")
        for item in failed:
            error = item["error"] or {}
            st.error(f"**{item['name']}**: " + plain.error_sentence(error.get("code"), error.get("message", ""),
                                                                       error.get("stage")), icon=":material/error:")
        with st.expander("Details"):
            for item in failed:
                error = item["error"] or {}
                st.caption(f"{item['name']}: " + technical_details(error.get("code"), error.get("message", ""),
                                                                     error.get("stage")))
    skipped = {}
    for item in done:
        for entry in item["status"].get("skipped", []):
            skipped.setdefault(entry["stage"], entry)
    skipped_notes(list(skipped.values()), None)
    with st.expander("Rows", expanded=False):
        render_batch_rows(batch)


# ---------------------------------------------------------------------------------------------- page

def main() -> None:
    st.set_page_config(page_title="Old-photo restoration", page_icon=":material/photo_library:", layout="wide")
    url = gateway_url()
    gw = get_gateway(url)
    st.title("Old-photo restoration")
    try:
        stages = fetch_stages(url)
    except GatewayError as exc:
        stages = None
        show_error(exc, "The server's list of steps is unavailable. ")
    server_panel.render(stages, url, fetch_stages.clear)

    mode = st.radio("Mode", ("Simple", "Advanced"), key="mode", horizontal=True)
    uploads = st.file_uploader("Photos (JPEG or PNG; several at once, or a zip, for a batch)",
                               type=["jpg", "jpeg", "png", "zip"], accept_multiple_files=True, key="upload")
    items, problems = photos.expand_uploads([(u.name, u.getvalue()) for u in uploads or []])
    for name, why in problems:
        st.warning(f"{name}: {why}", icon=":material/warning:")
    is_batch = len(items) > 1 or any(u.name.lower().endswith(".zip") for u in uploads or [])
    if len(items) == 1 and not is_batch:
        st.caption(items[0].describe())
    elif items:
        st.caption(f"{len(items)} photos: " + ", ".join(p.name for p in items))
    fields, steps = simple_controls(stages) if mode == "Simple" else advanced_controls(stages)
    if mode == "Simple" and len(items) == 1 and not is_batch:
        fields = repair_review.review(gw, items[0], fields)
    decisions = ([photo_decisions(url, p.data, p.name, json.dumps(fields, sort_keys=True)) for p in items]
                 if fields is not None else [])
    plans = [photo_plan(stages, steps, p, mode, d) for p, d in zip(items, decisions)]
    busy = bool(st.session_state.get("job")) or bool((st.session_state.get("batch") or {}).get("items")
                                                       and not st.session_state["batch"].get("finished"))
    if items and fields is not None:
        if len(items) == 1 and not is_batch:
            for sentence in plain.decision_sentences(decisions[0]):
                st.caption(sentence)
        render_estimate(plans, len(items))
    if st.button("Restore", key="restore", type="primary", disabled=not items or fields is None or busy):
        if is_batch:
            start_batch(items, plans, fields)
        else:
            start_job(gw, items[0], fields, plans[0])
    if st.session_state.get("job"):
        follow_job(gw)
    batch = st.session_state.get("batch")
    if batch and not batch.get("finished"):
        follow_batch(gw)
    if batch and batch.get("finished"):
        render_batch_outcome(batch)
    error = st.session_state.get("job_error")
    if error is not None:
        show_error(error, "The restore could not start. ")
    if st.session_state.get("last_status"):
        result = st.session_state.get("result")
        render_outcome(st.session_state["last_status"], result["original"] if result else None)
        if result:
            result_extras(result)
    finishing_panel()


main()
