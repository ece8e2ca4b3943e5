"""Streamlit widgets built from a stage's served ``/info`` parameter schema (no per-stage UI code).

Each schema entry has name, type (float|int|bool|enum, anything else falls back to a JSON text box), default,
description, and optionally minimum / exclusive_minimum / maximum / choices / nullable. A widget's value is
returned only when it differs from the default, so the stage's own default applies otherwise.
"""
from __future__ import annotations

import json
import math
from typing import Any

import streamlit as st

DEFAULT_LABEL = "(default)"


def _bounds(spec: dict) -> tuple[float | None, float | None]:
    low, high = spec.get("minimum"), spec.get("maximum")
    if low is not None and spec.get("exclusive_minimum"):
        low = low + (1 if spec.get("type") == "int" else max(1e-6, abs(low) * 1e-6))
    return low, high


def _step(spec: dict) -> float:
    low, high = _bounds(spec)
    if low is not None and high is not None and high > low:
        span = high - low
        return float(10.0 ** math.floor(math.log10(span / 100)))
    return 0.1


def param_widget(spec: dict, key: str, container=st) -> Any:
    """One widget for one declared parameter; returns its value (None = not set / null)."""
    name, kind, default = spec["name"], spec.get("type"), spec.get("default")
    nullable = bool(spec.get("nullable"))
    help_text = spec.get("description") or None
    label = name.replace("_", " ")
    if kind == "bool":
        return container.checkbox(label, value=bool(default), key=key, help=help_text)
    if kind == "enum":
        choices = list(spec.get("choices") or [])
        options = ([DEFAULT_LABEL] if nullable or default is None else []) + choices
        index = options.index(default) if default in options else 0
        picked = container.selectbox(label, options, index=index, key=key, help=help_text)
        return None if picked == DEFAULT_LABEL else picked
    if kind in ("float", "int"):
        if nullable:
            auto = container.checkbox(f"{label}: automatic", value=default is None, key=key + "__auto",
                                      help=f"unset = the stage decides ({help_text})" if help_text else None)
            if auto:
                return None
        low, high = _bounds(spec)
        is_int = kind == "int"
        cast = int if is_int else float
        start = default if default is not None else (low if low is not None else 0)
        kwargs: dict[str, Any] = dict(value=cast(start), key=key, help=help_text,
                                      step=1 if is_int else float(_step(spec)))
        if low is not None:
            kwargs["min_value"] = cast(low)
        if high is not None:
            kwargs["max_value"] = cast(high)
        if not is_int:
            kwargs["format"] = "%.3g" if kwargs["step"] < 0.01 else "%.2f"
        if low is not None and high is not None:
            return container.slider(label, **kwargs)
        return container.number_input(label, **kwargs)
    # an unknown type: accept any JSON value, so a new kind of parameter is still usable
    raw = container.text_input(f"{label} (JSON, type {kind})", value=json.dumps(default), key=key, help=help_text)
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        container.error(f"'{name}' is not valid JSON")
        return default


def params_form(schema: list[dict], key_prefix: str, pinned: dict | None = None, container=st) -> dict[str, Any]:
    """Widgets for every parameter the step does not pin; the values that differ from their defaults."""
    pinned = pinned or {}
    chosen: dict[str, Any] = {}
    for spec in schema:
        if spec["name"] in pinned:
            continue
        value = param_widget(spec, f"{key_prefix}__{spec['name']}", container)
        default = spec.get("default")
        if value != default and not (isinstance(value, float) and isinstance(default, (int, float))
                                     and not isinstance(default, bool) and math.isclose(value, default)):
            chosen[spec["name"]] = value
    return chosen
