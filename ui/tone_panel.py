"""The tone stage's decision (gateway header X-Tone-Decision) in plain words, for the result view."""
from __future__ import annotations

import json
from typing import Any, Mapping

HEADER = "x-tone-decision"


def tone_decision(headers: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The decision JSON from a result's headers (any letter case), or None when tone did not run."""
    for key, value in (headers or {}).items():
        if key.lower() == HEADER:
            try:
                decision = json.loads(value)
            except json.JSONDecodeError:
                return None
            return decision if isinstance(decision, dict) else None
    return None


def describe(decision: dict[str, Any]) -> str:
    """One sentence: what was measured and what was done."""
    kind = "black-and-white print" if decision.get("monochrome") else "colour photo"
    found = []
    if decision.get("faded"):
        found.append("faded (lifted blacks)")
    if decision.get("cast"):
        found.append(f"a colour cast (chroma {decision.get('cast_chroma', 0):.1f})")
    measured = " and ".join(found) if found else "neither faded nor colour-cast"
    contrast = (decision.get("contrast") or {}).get("l_std")
    contrast_text = f"; contrast (lightness spread) {contrast:.0f}" if isinstance(contrast, (int, float)) else ""
    verdict = decision.get("decision", "")
    if verdict.startswith("corrected"):
        applied = decision.get("applied") or {}
        what = "levels and colour balance" if applied.get("cast") else "levels"
        if applied.get("local_contrast"):
            what += " and local contrast"
        action = f"Tone corrected {what}" + (" (forced)" if verdict == "corrected-forced" else "")
    else:
        action = "Tone left the photo unchanged"
    return f"{action}: {kind}, measured {measured}{contrast_text}."


def render_tone_decision(result: Mapping[str, Any] | None, container) -> None:
    """Show the decision of the last result (``result['headers']``) in ``container`` (st or a column)."""
    decision = tone_decision((result or {}).get("headers"))
    if decision is not None:
        container.info(describe(decision), icon=":material/tune:")
