"""The finishing panel as a Streamlit custom component: sliders and preview run in the browser.

``ui/finishing_component/`` is plain static HTML + JS (no build step) speaking Streamlit's component protocol.
Python sends the screen-sized copy of the result once (PNG bytes: exactly the pixels ``ui.finishing.preview``
would finish), the original at the same size for the before/after slider, and the current settings; the
page then applies the same blur + soft-threshold unsharp mask (``finish.js``) on every slider change without a
server round trip, and returns the chosen settings, which the download applies to the full image through the
gateway's ``/v1/finish``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import streamlit.components.v1 as components

from ui import finishing

FRONTEND = Path(__file__).resolve().parent / "finishing_component"
_component = components.declare_component("finishing_preview", path=str(FRONTEND))


def png_of_base(base: finishing.PreviewBase) -> bytes:
    """The preview copy as lossless PNG (the browser finishes these exact 8-bit pixels)."""
    rgb8 = np.clip(np.rint(base.rgb * 255.0), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def clean(value: Any, sliders) -> dict[str, float]:
    """The component's value as settings: known keys only, clamped to the slider ranges, step-rounded."""
    out = dict(finishing.DEFAULTS)
    if isinstance(value, dict):
        for key, _label, low, high, step, _help in sliders:
            try:
                number = float(value.get(key, out[key]))
            except (TypeError, ValueError):
                continue
            if np.isfinite(number):
                out[key] = float(round(min(high, max(low, round(number / step) * step)), 6))
    return out


def finishing_preview(*, image_png: bytes, before_jpeg: bytes, image_id: str, scale: float,
                      full_size: tuple[int, int], settings: dict[str, float], sliders, key: str,
                      max_height: int = 860, pixels: bool = False,
                      presets: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """Show the live finishing panel (preset buttons, sliders, a page-wide before/after view; ``pixels``:
    at 100 %); returns the settings the user chose (``settings`` until they do)."""
    presets = finishing.PRESETS if presets is None else presets
    value = _component(image=image_png, before=before_jpeg, before_mime="image/jpeg", image_id=image_id,
                       scale=float(scale), full_size=list(full_size), settings=settings,
                       defaults=finishing.DEFAULTS, sliders=[list(s) for s in sliders], max_height=max_height,
                       pixels=pixels, presets=[[name, p] for name, p in presets.items()],
                       before_label="Original", after_label="Restored", key=key, default=settings)
    return clean(value, sliders)
