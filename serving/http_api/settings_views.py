"""``/v2[/models/{m}]/trace/setting`` and ``/v2/logging`` bodies (Triton's
trace and logging extensions) <-> the plain dicts of
``serving.trace_settings`` and ``serving.log_settings``."""

from __future__ import annotations

from typing import Any

from serving.errors import InvalidInput
from serving.service import InferenceService

#: Trace settings whose JSON value is an array (the others are strings).
_ARRAYS = ("trace_level",)


def trace_updates(body: dict[str, Any]) -> dict[str, list[str] | None]:
    """A POST body: each value a string, an array of strings, or null (clear)."""
    updates: dict[str, list[str] | None] = {}
    for key, value in body.items():
        if value is None:
            updates[key] = None
        elif isinstance(value, str):
            updates[key] = [value]
        elif isinstance(value, int) and not isinstance(value, bool):
            updates[key] = [str(value)]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            updates[key] = list(value)
        else:
            raise InvalidInput(
                f"trace setting {key[:60]!r} must be a string, an array of strings or null"
            )
    return updates


def trace_settings(current: dict[str, list[str]]) -> dict[str, Any]:
    """As Triton answers: trace_level an array, every other setting a string."""
    return {k: v if k in _ARRAYS else (v[0] if v else "") for k, v in current.items()}


def log_updates(body: dict[str, Any]) -> dict[str, bool | int | str | None]:
    """A POST body: booleans, whole numbers, strings (checked by LogSettings)."""
    updates: dict[str, bool | int | str | None] = {}
    for key, value in body.items():
        if value is not None and not isinstance(value, (bool, int, str)):
            raise InvalidInput(f"log setting {key[:60]!r} must be a boolean, number or string")
        updates[key] = value
    return updates


def answer(
    service: InferenceService, kind: str, model: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON answer to a GET (``body`` None) or POST of ``kind`` ("trace"
    or "logging") settings."""
    if kind == "logging":
        logs = service.logs
        return dict(logs.get() if body is None else logs.update(log_updates(body)))
    tracing = service.tracing
    if body is None:
        return trace_settings(tracing.get_settings(model))
    return trace_settings(tracing.update_settings(model, trace_updates(body)))
