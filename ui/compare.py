"""A self-contained before/after comparison slider (inline HTML + a few lines of JS, no CDN: works offline)."""
from __future__ import annotations

import base64

TEMPLATE = """<!doctype html><html><head><style>
body {{ margin: 0; font-family: sans-serif; }}
.cmp {{ position: relative; width: {width}px; max-width: 100%; aspect-ratio: {aspect}; user-select: none; }}
.cmp img {{ position: absolute; inset: 0; width: 100%; height: 100%; display: block; }}
.cmp #before {{ clip-path: inset(0 calc(100% - var(--pos)) 0 0); }}
.cmp .line {{ position: absolute; top: 0; bottom: 0; left: var(--pos); width: 2px; background: #fff;
  box-shadow: 0 0 3px #000; pointer-events: none; }}
.cmp .tag {{ position: absolute; top: 6px; padding: 2px 6px; font-size: 12px; color: #fff;
  background: rgba(0,0,0,.55); border-radius: 3px; }}
.cmp input {{ position: absolute; inset: 0; width: 100%; height: 100%; margin: 0; opacity: 0; cursor: ew-resize; }}
</style></head><body>
<div class="cmp" id="cmp" style="--pos: {position}%">
  <img id="after" alt="{after_label}" src="data:{after_mime};base64,{after}">
  <img id="before" alt="{before_label}" src="data:{before_mime};base64,{before}">
  <div class="line"></div>
  <span class="tag" style="left:6px">{before_label}</span><span class="tag" style="right:6px">{after_label}</span>
  <input id="split" type="range" min="0" max="100" step="0.5" value="{position}" aria-label="before/after split"
    oninput="document.getElementById('cmp').style.setProperty('--pos', this.value + '%')">
</div></body></html>"""


def comparison_html(before: bytes, after: bytes, size: tuple[int, int], *, width: int = 700, max_height: int = 720,
                    before_label: str = "Before", after_label: str = "After", position: float = 50,
                    before_mime: str = "image/jpeg", after_mime: str = "image/jpeg") -> tuple[str, int]:
    """HTML for the slider and the iframe height it needs; ``size`` = (width, height) of the images."""
    img_w, img_h = size
    width = min(width, img_w) if img_w >= 200 else width
    width = max(100, min(width, round(max_height * img_w / img_h)))   # portrait photos stay on screen
    height = round(width * img_h / img_w)
    html = TEMPLATE.format(width=width, aspect=f"{img_w} / {img_h}", position=position,
                           before=base64.b64encode(before).decode(), after=base64.b64encode(after).decode(),
                           before_mime=before_mime, after_mime=after_mime, before_label=before_label,
                           after_label=after_label)
    return html, height + 4
