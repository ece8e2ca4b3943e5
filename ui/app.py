"""Streamlit UI for the old-photo restoration service (port 8501).

Everything goes through the gateway's HTTP API (GATEWAY_URL, default http://127.0.0.1:8000): stage
availability from /v1/stages, restores as async jobs (/v1/jobs) with per-stage progress, the full-size
finishing and download from /v1/finish. The finishing preview runs in the browser (ui/finishing_component,
the same maths as ui/finishing.py) on a screen-sized copy: slider changes need no server round trip.
"""
from __future__ import annotations

import io
import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run ui/app.py` puts only ui/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from PIL import Image  # noqa: E402

from ui import finishing, live_preview, tone_panel, widgets  # noqa: E402
from ui.gateway_client import (FINAL_STATES, Gateway, GatewayError, advanced_fields, gateway_url,  # noqa: E402
                               simple_fields)

SIMPLE_CHAIN = ("denoise", "deblur", "tone", "colorize", "upscale", "post-denoise", "sharpen")
UPSCALE_CHOICES = ("none", "x2", "x4", "enhance", "custom")
POLL_S = 0.25
FINISH_KEY = "finish_ctl"   # the browser finishing panel's value: the chosen settings
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
    st.error(f"{prefix}{error.describe()}", icon=":material/error:")


# ---------------------------------------------------------------------------------------------- availability

def service_of(stages: dict, step: str) -> str:
    return stages.get("steps", {}).get(step, {}).get("service", step)


def service_state(stages: dict, service: str) -> tuple[bool, str]:
    """(usable, why not) for a service from /v1/stages."""
    entry = stages.get("services", {}).get(service)
    if entry is None:
        return False, "not known to the gateway"
    if entry.get("status") == "ok":
        return True, ""
    if entry.get("status") == "down":
        return False, f"service down: {entry.get('error', {}).get('message', 'unreachable')}"
    models = entry.get("info", {}).get("models", {})
    missing = [f"{name} (`{m.get('fetch_command')}`)" if m.get("fetch_command") else name
               for name, m in models.items() if not m.get("available")]
    return False, "no model installed" + (f": {', '.join(missing)}" if missing else "")


def render_availability(stages: dict) -> None:
    st.sidebar.subheader("Stage availability")
    for service, entry in sorted(stages.get("services", {}).items()):
        usable, why = service_state(stages, service)
        icon = ":green[●]" if usable else (":red[●]" if entry.get("status") == "down" else ":orange[●]")
        label = "ready" if usable else ("down" if entry.get("status") == "down" else "not installed")
        with st.sidebar.expander(f"{icon} {service}: {label}", expanded=not usable):
            info = entry.get("info", {})
            if info.get("description"):
                st.caption(info["description"])
            models = info.get("models") or {}
            if models:
                for name, model in models.items():
                    mark = ":green[✔ installed]" if model.get("available") else ":red[✖ not installed]"
                    default = " (default)" if model.get("default") else ""
                    st.markdown(f"- `{name}`{default}: {mark}")
                    if not model.get("available") and model.get("fetch_command"):
                        st.caption(f"fetch: `{model['fetch_command']}`")
            elif usable:
                st.markdown("- classical algorithm, no model needed")
            if not usable and why:
                st.caption(why)


# ---------------------------------------------------------------------------------------------- controls

def simple_controls(stages: dict | None) -> dict[str, str] | None:
    cols = st.columns(3)
    colorize = cols[0].selectbox("Colorize", ("auto", "on", "off"), key="colorize",
                                 help="auto: only grayscale photos; on: always; off: never")
    upscale = cols[1].selectbox("Upscale", UPSCALE_CHOICES, key="upscale",
                                help="x2/x4: super-resolution; enhance: restore detail at the same size")
    if upscale == "custom":
        factor = cols[2].number_input("Upscale factor", min_value=1.1, max_value=8.0, value=1.5, step=0.1,
                                      key="upscale_factor")
        upscale = f"{factor:g}"
    if stages is not None:
        wanted = [s for s in SIMPLE_CHAIN if not (s == "colorize" and colorize == "off")
                  and not (s == "upscale" and upscale == "none")]
        missing = [(s, service_state(stages, service_of(stages, s))[1]) for s in wanted
                   if not service_state(stages, service_of(stages, s))[0]]
        if missing:
            st.info("No model installed for these stages; they are skipped where they need one: "
                    + "; ".join(f"**{s}** ({why})" for s, why in missing), icon=":material/info:")
    return simple_fields(colorize, upscale)


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


def advanced_controls(stages: dict | None) -> dict[str, str] | None:
    if stages is None:
        st.warning("Advanced mode needs the stage list from the gateway.")
        return None
    chain = st.session_state.setdefault("chain", [])
    steps = stages.get("steps", {})
    add_cols = st.columns([3, 1, 2])
    add_cols[0].selectbox("Stage", list(steps), key="adv_add_stage",
                          format_func=lambda s: s + ("" if service_state(stages, service_of(stages, s))[0]
                                                     else " (not installed)"))
    add_cols[1].button("Add stage", key="adv_add", on_click=_add, use_container_width=True)
    add_cols[2].button("Start from the standard chain", key="adv_standard", on_click=_load_simple_chain)
    if not chain:
        st.caption("Add stages in the order they should run; any order is allowed.")
        return None
    payload = []
    for index, entry in enumerate(chain):
        stage, uid = entry["stage"], entry["uid"]
        service = service_of(stages, stage)
        usable, why = service_state(stages, service)
        with st.expander(f"{index + 1}. {stage}" + ("" if usable else "  :orange[(not available)]"), expanded=True):
            buttons = st.columns([1, 1, 1, 6])
            buttons[0].button("↑", key=f"up_{uid}", on_click=_move, args=(index, -1), disabled=index == 0)
            buttons[1].button("↓", key=f"down_{uid}", on_click=_move, args=(index, 1),
                              disabled=index == len(chain) - 1)
            buttons[2].button("✕", key=f"rm_{uid}", on_click=_remove, args=(index,))
            if not usable:
                st.warning(f"**{stage}** is not available ({why}); in advanced mode the job fails at this step.")
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
    return advanced_fields(payload)


# ---------------------------------------------------------------------------------------------- jobs

def stage_rows(status: dict) -> list[tuple[str, str, str]]:
    """(stage, state, note) for every stage of a job status, in chain order."""
    done = {d["stage"]: d for d in status.get("stages_done", [])}
    skipped = {s["stage"]: s["reason"] for s in status.get("skipped", [])}
    error = status.get("error") or {}
    rows = []
    for name in status.get("stages", []):
        if name in done:
            rows.append((name, "done", f"{done[name]['ms'] / 1000:.1f} s"))
        elif name in skipped:
            rows.append((name, "skipped", skipped[name]))
        elif status.get("state") == "failed" and (error.get("stage") == name or status.get("stage") == name):
            rows.append((name, "failed", error.get("message", "")))
        elif status.get("state") == "running" and status.get("stage") == name:
            rows.append((name, "running", ""))
        elif status.get("state") == "cancelled":
            rows.append((name, "cancelled", ""))
        else:
            rows.append((name, "pending", ""))
    return rows


def render_job(status: dict, container) -> None:
    with container.container():
        state = status.get("state", "?")
        st.progress(min(1.0, float(status.get("progress", 0))),
                    text=f"Job {state}" + (f": {status['stage']}" if status.get("stage") and state == "running" else ""))
        lines = []
        for name, row_state, note in stage_rows(status):
            text = f"{STATE_ICONS[row_state]} **{name}** {row_state}"
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


def start_job(gw: Gateway, upload, fields: dict[str, str]) -> None:
    data = upload.getvalue()
    for stale in ("download", "job_error", "result", "last_status", "previews"):
        st.session_state.pop(stale, None)
    try:
        status = gw.submit_job(data, upload.name, fields)
    except GatewayError as exc:
        st.session_state["job_error"] = exc
        st.session_state["job"] = None
        return
    st.session_state["job"] = {"id": status["id"], "status": status, "original": data, "name": upload.name}


def follow_job(gw: Gateway) -> None:
    """Poll the active job, showing per-stage progress, until it reaches a final state."""
    job = st.session_state["job"]
    cancel_slot = st.empty()
    cancel_slot.button("Cancel", key="cancel", on_click=_cancel_job)
    placeholder = st.empty()
    status = job["status"]
    while status.get("state") not in FINAL_STATES:
        render_job(status, placeholder)
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
    if status["state"] == "done":
        try:
            result = gw.job_result(job["id"])
        except GatewayError as exc:
            st.session_state["job_error"] = exc
            return
        st.session_state["result"] = {"id": job["id"], "png": result.image, "headers": result.headers,
                                      "original": job["original"], "name": job["name"], "status": status}
        st.session_state.pop("previews", None)
        st.session_state.pop("download", None)


def render_outcome(status: dict) -> None:
    """Final per-stage list plus a clear message for every skipped stage and any error."""
    state = status["state"]
    if state == "done":
        ran = [d["stage"] for d in status.get("stages_done", [])]
        total = sum(d["ms"] for d in status.get("stages_done", [])) / 1000
        st.success(f"Restored: {', '.join(ran) or 'no stage ran'} ({total:.1f} s)", icon=":material/check_circle:")
    elif state == "cancelled":
        st.warning("The job was cancelled.", icon=":material/cancel:")
    elif state == "failed":
        error = status.get("error") or {}
        where = f"stage **{error['stage']}**: " if error.get("stage") else ""
        st.error(f"The restore failed at {where}{error.get('message', 'unknown error')} (`{error.get('code')}`)",
                 icon=":material/error:")
    for skipped in status.get("skipped", []):
        st.warning(f"Skipped **{skipped['stage']}**: {skipped['reason']}", icon=":material/skip_next:")
    with st.expander("Stages", expanded=False):
        render_job(status, st)


# ---------------------------------------------------------------------------------------------- finishing

def finish_settings() -> dict[str, float]:
    """The settings the browser panel last sent back (the defaults until the user moves a slider)."""
    return live_preview.clean(st.session_state.get(FINISH_KEY), FINISH_SLIDERS)


def preview_sources(result: dict, zoom: str) -> tuple[finishing.PreviewBase, bytes, bytes]:
    """Screen-sized copies of the result (PNG, finished live in the browser) and of the original (before)."""
    cache = st.session_state.setdefault("previews", {})
    key = (result["id"], zoom)
    if key not in cache:
        crop = zoom != "Fit"
        after = finishing.make_base(result["png"], crop=crop)
        before_full = finishing.decode_rgb8(result["original"], orient=True)
        before_full = finishing.resize_to(before_full, after.full_size)
        before = finishing.make_base_from_rgb8(before_full, crop=crop)
        cache[key] = (after, live_preview.png_of_base(after), finishing.to_jpeg(finishing.preview(before, {})))
    return cache[key]


@st.fragment
def finishing_panel() -> None:
    """Sliders and the before/after preview run in the browser (ui/finishing_component): a slider change is
    drawn there without a server round trip; the chosen settings come back here for the download."""
    result = st.session_state.get("result")
    if not result:
        return
    st.subheader("Finishing")
    zoom = st.radio("Preview", ("Fit", "100 % (centre)"), key="zoom", horizontal=True)
    base, after_png, before_jpeg = preview_sources(result, zoom)
    settings = live_preview.finishing_preview(
        image_png=after_png, before_jpeg=before_jpeg, image_id=f"{result['id']}/{zoom}", scale=base.scale,
        full_size=base.full_size, settings=finish_settings(), sliders=FINISH_SLIDERS, key=FINISH_KEY)
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


# ---------------------------------------------------------------------------------------------- page

def describe_upload(name: str, data: bytes) -> str:
    """'name: W×H px, N MB' from the header alone (the gateway does the real decoding and checks)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return f"{name}: {im.width}×{im.height} px, {len(data) / 1e6:.1f} MB"
    except Exception:
        return f"{name}: {len(data) / 1e6:.1f} MB (not a readable image header)"


def main() -> None:
    st.set_page_config(page_title="Old-photo restoration", page_icon=":material/photo:", layout="wide")
    url = gateway_url()
    gw = get_gateway(url)
    st.title("Old-photo restoration")
    st.sidebar.caption(f"Gateway: {url}")
    if st.sidebar.button("Refresh", key="refresh_stages"):
        fetch_stages.clear()
    try:
        stages = fetch_stages(url)
    except GatewayError as exc:
        stages = None
        show_error(exc, "Stage list unavailable: ")
    if stages is not None:
        render_availability(stages)

    mode = st.radio("Mode", ("Simple", "Advanced"), key="mode", horizontal=True)
    upload = st.file_uploader("Photo (JPEG or PNG)", type=["jpg", "jpeg", "png"], key="upload")
    if upload is not None:
        st.caption(describe_upload(upload.name, upload.getvalue()))
    fields = simple_controls(stages) if mode == "Simple" else advanced_controls(stages)
    busy = bool(st.session_state.get("job"))
    if st.button("Restore", key="restore", type="primary", disabled=upload is None or fields is None or busy):
        start_job(gw, upload, fields)
    if st.session_state.get("job"):
        follow_job(gw)
    error = st.session_state.get("job_error")
    if error is not None:
        show_error(error, "Could not run the job: ")
    if st.session_state.get("last_status"):
        render_outcome(st.session_state["last_status"])
    tone_panel.render_tone_decision(st.session_state.get("result"), st)
    finishing_panel()


main()
