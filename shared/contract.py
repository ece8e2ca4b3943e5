"""The one contract every stage service and the gateway speak.

Errors travel as ``{"error": {"code", "message", "stage"}}``; parameters are declared once per stage as
``Param`` objects, which give both validation (422 naming the field) and the schema served by ``/info``.
"""
from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

STAGE_NAMES = ("denoise", "deblur", "colorize", "upscale", "postprocess", "repair", "tone")
DEFAULT_PORTS = {"gateway": 8000, "denoise": 8101, "deblur": 8102, "colorize": 8103, "upscale": 8104,
                 "postprocess": 8105, "repair": 8106, "tone": 8107, "ui": 8501}
PROCESS_TIME_HEADER = "X-Process-Time-Ms"
# /process params as a header, for a request whose body is the image alone (the gateway's hops)
PARAMS_HEADER = "X-Stage-Params"


class StageError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 stage: str | None = None, headers: Mapping[str, str] | None = None,
                 details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})
        if code:
            self.code = code
        if status:
            self.status = status
        self.stage = stage
        self.headers = dict(headers or {})

    def body(self) -> dict:
        body = error_body(self.code, self.message, self.stage)
        body["error"].update(self.details)
        return body


class BadRequest(StageError):
    status = 400
    code = "bad_request"


class InvalidParams(StageError):
    status = 422
    code = "invalid_params"

    def __init__(self, message: str, *, field: str | None = None, **kwargs):
        super().__init__(message, details={"field": field} if field is not None else None, **kwargs)
        self.field = field


class UnsupportedImage(StageError):
    status = 415
    code = "unsupported_media_type"


class ImageTooLarge(StageError):
    status = 413
    code = "image_too_large"


class ModelUnavailable(StageError):
    """The stage's model weights are not installed; names them and the command that fetches them."""

    status = 503
    code = "model_unavailable"

    def __init__(self, model: str, fetch_command: str, *, reason: str = "weights are not installed",
                 stage: str | None = None):
        super().__init__(f"model '{model}' is unavailable: {reason}. Fetch it with: {fetch_command}",
                         stage=stage, details={"model": model, "fetch_command": fetch_command})
        self.model = model
        self.fetch_command = fetch_command


def error_body(code: str, message: str, stage: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "stage": stage}}


@dataclass(frozen=True)
class Param:
    """One declared stage parameter. ``kind`` is float, int, bool or enum."""

    name: str
    kind: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def schema(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default,
                               "description": self.description}
        if self.minimum is not None:
            out["minimum"] = self.minimum
            out["exclusive_minimum"] = self.exclusive_minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices:
            out["choices"] = list(self.choices)
        if self.nullable:
            out["nullable"] = True
        return out

    def coerce(self, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise InvalidParams(f"parameter '{self.name}' must not be null", field=self.name)
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise InvalidParams(f"parameter '{self.name}' must be true or false", field=self.name)
        if self.kind == "enum":
            if isinstance(value, str) and value in self.choices:
                return value
            raise InvalidParams(f"parameter '{self.name}' must be one of {list(self.choices)}, got {value!r}",
                                field=self.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidParams(f"parameter '{self.name}' must be a number, got {_preview(value)}", field=self.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidParams(f"parameter '{self.name}' must be a finite number", field=self.name)
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            # far outside every declared range; float() of it would overflow
            raise InvalidParams(f"parameter '{self.name}' is out of range", field=self.name)
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise InvalidParams(f"parameter '{self.name}' must be an integer", field=self.name)
            value = int(value)
        else:
            value = float(value)
        low_ok = self.minimum is None or (value > self.minimum if self.exclusive_minimum else value >= self.minimum)
        high_ok = self.maximum is None or value <= self.maximum
        if not (low_ok and high_ok):
            low = "(" if self.exclusive_minimum else "["
            raise InvalidParams(f"parameter '{self.name}' = {value} is out of range "
                                f"{low}{self.minimum}, {self.maximum}]", field=self.name)
        return value


# Integers beyond this many bits are refused before any arithmetic (every range here is far smaller).
MAX_INT_BITS = 64
# Deeper JSON than this is refused before parsing (stage lists and params are two or three levels deep).
MAX_JSON_DEPTH = 32


def _preview(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def params_schema(params: Iterable[Param]) -> list[dict]:
    return [p.schema() for p in params]


def parse_json_field(raw: str, field: str, expected: type) -> Any:
    """A form field holding JSON of the ``expected`` type (dict or list), or InvalidParams naming it."""
    if _nesting_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidParams(f"'{field}' is nested deeper than {MAX_JSON_DEPTH} levels", field=field)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidParams(f"'{field}' is not valid JSON: {exc.msg}", field=field) from None
    except ValueError:
        # Python refuses integers longer than its int-string limit (4300 digits)
        raise InvalidParams(f"'{field}' holds a number too long to read", field=field) from None
    except RecursionError:
        raise InvalidParams(f"'{field}' is nested too deeply", field=field) from None
    if not isinstance(value, expected):
        raise InvalidParams(f"'{field}' must be a JSON {'object' if expected is dict else 'list'}", field=field)
    return value


def _nesting_depth(raw: str) -> int:
    """Bracket depth, counted without parsing (strings may hold brackets; they only over-count)."""
    depth = deepest = 0
    for char in raw:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_params_json(raw: str | None) -> dict:
    """Parse the ``params`` form field (a JSON object); empty means all defaults."""
    if raw is None or not raw.strip():
        return {}
    return parse_json_field(raw, "params", dict)


def validate_params(declared: Iterable[Param], given: Mapping[str, Any]) -> dict:
    """Fill defaults, reject unknown names and out-of-range values (InvalidParams names the field)."""
    by_name = {p.name: p for p in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        name = _preview(unknown[0])[1:-1] if len(unknown[0]) > 40 else unknown[0]
        raise InvalidParams(f"unknown parameter '{name}'; known: {sorted(by_name)}", field=name)
    return {name: (p.coerce(given[name]) if name in given else p.default) for name, p in by_name.items()}


def validate_against_schema(schema: list[dict], given: Mapping[str, Any]) -> dict:
    """Same validation from a served ``/info`` schema (used by the gateway before it runs a chain)."""
    declared = [Param(name=s["name"], kind=s["type"], default=s.get("default"), description="",
                      minimum=s.get("minimum"), maximum=s.get("maximum"),
                      exclusive_minimum=s.get("exclusive_minimum", False),
                      choices=tuple(s.get("choices", ())), nullable=s.get("nullable", False))
                for s in schema]
    return validate_params(declared, given)


class Aborted(StageError):
    """The request was abandoned (its client went away or it was cancelled): the stage stops its work."""

    status = 499
    code = "aborted"


class StageContext:
    """Per-request state handed to a stage: progress, abort, and extra response headers.

    After chaiNNer's ``NodeContext``: ``set_progress`` (0..1), ``sub_progress`` (a view that maps its own 0..1
    onto a slice of the parent's range) and ``check_aborted`` (raises ``Aborted`` once ``abort`` was called).
    A new one is made for every request, so nothing of one request can leak into another. ``abort`` may be
    called from any thread; the stage notices at its next check (the tiler checks before every tile, the
    torch models between layers, ONNX Runtime through its terminate flag).
    """

    def __init__(self) -> None:
        self.response_headers: dict[str, str] = {}
        # what a content-dependent stage decided for this picture ("sharp", "motion", ...): its cost
        # depends on it, so its throughput is recorded per decision
        self.decision: str | None = None
        self._progress = 0.0
        self._aborted = threading.Event()
        self._abort_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ progress
    @property
    def progress_value(self) -> float:
        return self._progress

    def set_progress(self, progress: float) -> None:
        # progress only moves forward: a stage that reports a sub-step twice never makes a bar jump back
        self._progress = max(self._progress, min(1.0, max(0.0, float(progress))))

    def sub_progress(self, offset: float, length: float) -> "SubProgress":
        return SubProgress(self, offset, length)

    def progress(self, done: int, total: int) -> None:
        """Counting form of ``set_progress`` (``done`` of ``total`` steps)."""
        self.set_progress(done / total if total else 1.0)

    # ------------------------------------------------------------------ abort
    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def check_aborted(self) -> None:
        if self._aborted.is_set():
            raise Aborted("the request was aborted before it finished")

    def abort(self) -> None:
        with self._lock:
            if self._aborted.is_set():
                return
            self._aborted.set()
            callbacks = list(self._abort_callbacks)
        for callback in callbacks:
            callback()

    def on_abort(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the request is aborted (at once if it already was); returns an unregister."""
        with self._lock:
            if not self._aborted.is_set():
                self._abort_callbacks.append(callback)
                return lambda: self._forget(callback)
        callback()
        return lambda: None

    def _forget(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._abort_callbacks:
                self._abort_callbacks.remove(callback)

    # ------------------------------------------------------------------ headers
    def set_header(self, name: str, value: str) -> None:
        self.response_headers[name] = value


class SubProgress:
    """A slice ``[offset, offset + length]`` of a parent's progress; abort checks go to the parent."""

    def __init__(self, parent: "StageContext | SubProgress", offset: float, length: float):
        self.parent, self.offset, self.length = parent, offset, length

    @property
    def aborted(self) -> bool:
        return self.parent.aborted

    def check_aborted(self) -> None:
        self.parent.check_aborted()

    def on_abort(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.parent.on_abort(callback)

    def set_progress(self, progress: float) -> None:
        self.parent.set_progress(self.offset + min(1.0, max(0.0, progress)) * self.length)

    def sub_progress(self, offset: float, length: float) -> "SubProgress":
        return SubProgress(self, offset, length)

    def progress(self, done: int, total: int) -> None:
        self.set_progress(done / total if total else 1.0)
