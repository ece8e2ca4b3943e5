"""Damage review in simple mode: the repair choice, and the detected defects shown over the photo.

"Check for damage" asks the gateway for the repair stage's mask (``mode=mask_only``); the mask is drawn in
red over the photo and can be toggled. Unticking "Repair the marked damage" runs the job with repair off.
"""
from __future__ import annotations

import io
import json

import httpx
import numpy as np
import streamlit as st
from PIL import Image

from ui.gateway_client import Gateway, GatewayError

REPAIR_CHOICES = ("auto", "on", "off")
OVERLAY_RGB = np.array([255, 40, 40], np.float32)
OVERLAY_OPACITY = 0.75
PREVIEW_SIDE = 1200


def detect_mask(gw: Gateway, image: bytes, filename: str) -> tuple[bytes, dict]:
    """The repair stage's mask PNG (white = defect) and its decision, through the gateway."""
    stages = [{"stage": "repair", "params": {"mode": "mask_only"}}]
    try:
        response = gw.http.post("/v1/pipeline", files={"image": (filename, image, "application/octet-stream")},
                                data={"stages": json.dumps(stages)}, timeout=httpx.Timeout(300.0, connect=5.0))
    except httpx.HTTPError as exc:
        raise GatewayError(f"cannot reach the gateway ({type(exc).__name__})", code="gateway_unreachable") from None
    if response.status_code >= 400:
        raise GatewayError.from_response(response)
    decision = json.loads(response.headers.get("x-repair-decision", "{}") or "{}")
    return response.content, decision


def overlay(photo: bytes, mask_png: bytes) -> Image.Image:
    """The photo (screen-sized) with the flagged pixels tinted red."""
    with Image.open(io.BytesIO(photo)) as im:
        base = im.convert("RGB")
    with Image.open(io.BytesIO(mask_png)) as im:
        mask = im.convert("L").resize(base.size, Image.NEAREST)
    scale = min(1.0, PREVIEW_SIDE / max(base.size))
    if scale < 1.0:
        size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
        base = base.resize(size, Image.LANCZOS)
        # a defect of one pixel must stay visible when the preview is reduced: take the max, not the mean
        mask = mask.resize(size, Image.BOX).point(lambda v: 255 if v > 0 else 0)
    rgb = np.asarray(base, np.float32)
    flagged = (np.asarray(mask) > 127)[:, :, None] * OVERLAY_OPACITY
    return Image.fromarray(np.round(rgb * (1 - flagged) + OVERLAY_RGB * flagged).astype(np.uint8))


def review(gw: Gateway, upload, fields: dict[str, str] | None) -> dict[str, str] | None:
    """Simple-mode repair controls; returns the job fields with ``repair`` set."""
    if fields is None:
        return None
    choice = st.selectbox("Repair scratches and dust", REPAIR_CHOICES, key="repair",
                          help="auto: repair what is clearly damage; on: repair every candidate; off: never")
    fields = {**fields, "repair": choice}
    if upload is None or choice == "off":
        return fields
    data = upload.getvalue()
    key = (upload.name, len(data))
    if st.button("Check for damage", key="repair_check"):
        try:
            st.session_state["repair_mask"] = (key, *detect_mask(gw, data, upload.name))
        except GatewayError as exc:
            st.error(f"Damage check failed: {exc.describe()}", icon=":material/error:")
    stored = st.session_state.get("repair_mask")
    if not stored or stored[0] != key:
        return fields
    _, mask_png, decision = stored
    share = float(decision.get("fraction", 0.0))
    st.caption(f"Found {decision.get('lines', 0)} scratch/crease line(s) and {decision.get('specks', 0)} "
               f"speck(s): {share:.2%} of the photo. {decision.get('reason', '')}")
    if st.toggle("Show detected damage", value=True, key="repair_overlay"):
        st.image(overlay(data, mask_png), caption="Detected damage (red)", use_container_width=True)
    if not st.checkbox("Repair the marked damage", value=True, key="repair_accept"):
        fields["repair"] = "off"
    return fields
