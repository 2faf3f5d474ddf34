"""Triton's trace settings: ``--trace-config`` at start, the TraceSetting
RPC and ``/v2[/models/{m}]/trace/setting`` at run time, and the sampler
they drive (``serving.tracing`` exports what it samples).

Spelling as Triton's (docs: user_guide/trace.md, protocol/extension_trace.md):

    --trace-config mode=opentelemetry     the only mode (Triton's file mode is not offered)
    --trace-config level=TIMESTAMPS       OFF (the default) or TIMESTAMPS
    --trace-config rate=100               trace 1 in every 100 requests (default 1000)
    --trace-config count=10               stop after 10 traces (default -1: no limit)
    --trace-config opentelemetry,url=http://collector:4318/v1/traces
    --trace-config opentelemetry,resource=deployment.environment=prod   (repeatable)
    --trace-config opentelemetry,bsp_max_queue_size=2048               (and bsp_schedule_delay
                   in ms, bsp_max_export_batch_size: the batch span processor's knobs)
    --trace-config opentelemetry,timeout=10   seconds per export (a dlserve addition)

At run time the settings are ``trace_level`` (a list), ``trace_rate``,
``trace_count`` (what is left of it), ``trace_mode``; per model or global.
A model's setting overrides the global one; a setting sent without a value
clears it: the model falls back to the global value, the global one to its
value at start. ``trace_file`` and ``log_frequency`` belong to Triton's file
mode: reported empty, refused when set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from serving.errors import InvalidInput, ModelNotFound

LEVELS = ("OFF", "TIMESTAMPS")
DEFAULT_URL = "http://localhost:4318/v1/traces"
_RUNTIME_KEYS = (
    "trace_level",
    "trace_rate",
    "trace_count",
    "trace_mode",
    "trace_file",
    "log_frequency",
)


@dataclass(frozen=True)
class Export:
    """Where and how sampled traces go (fixed at start)."""

    url: str = DEFAULT_URL
    resource: tuple[tuple[str, str], ...] = ()
    max_queue_size: int = 2048
    schedule_delay_ms: int = 5000
    max_export_batch_size: int = 512
    timeout_s: float = 10.0


@dataclass(frozen=True)
class Scope:
    """The settings of one scope (global or a model); None: not set here."""

    level: str | None = None
    rate: int | None = None
    count: int | None = None


@dataclass(frozen=True)
class TraceConfig:
    """What ``--trace-config`` said."""

    scope: Scope = field(default_factory=lambda: Scope("OFF", 1000, -1))
    export: Export = field(default_factory=Export)
    #: Whether any --trace-config was given (the SDK is then loaded at start).
    configured: bool = False


def parse(entries: Sequence[str]) -> TraceConfig:
    """``--trace-config`` entries -> TraceConfig; ValueError with the reason."""
    level, rate, count = "OFF", 1000, -1
    export: dict[str, object] = {}
    resource: list[tuple[str, str]] = []
    for entry in entries:
        head, sep, value = entry.partition("=")
        mode, _, key = head.rpartition(",")
        if not sep or not key:
            raise ValueError(
                f"--trace-config {entry!r}: expected SETTING=VALUE or MODE,SETTING=VALUE"
            )
        try:
            if mode == "":
                if key == "mode" and value != "opentelemetry":
                    raise ValueError(f"mode={value}: dlserve only has mode=opentelemetry")
                if key == "level":
                    level = _level([value])
                elif key == "rate":
                    rate = _rate(value)
                elif key == "count":
                    count = _count(value)
                elif key != "mode":
                    raise ValueError(
                        f"{key}: unknown setting; use mode, level, rate, count or "
                        "opentelemetry,KEY=VALUE"
                    )
            elif mode == "opentelemetry":
                _export_setting(key, value, export, resource)
            elif mode == "triton":
                raise ValueError(
                    "triton,...: Triton's trace-file mode is not offered; dlserve exports "
                    "OpenTelemetry (opentelemetry,url=...)"
                )
            else:
                raise ValueError(f"{mode},...: unknown mode; use opentelemetry")
        except ValueError as exc:
            raise ValueError(f"--trace-config {exc}") from None
    fields: dict[str, Any] = export
    return TraceConfig(
        Scope(level, rate, count), Export(resource=tuple(resource), **fields), bool(entries)
    )


#: opentelemetry,KEY -> the Export field it sets.
_EXPORT_FIELDS = {
    "bsp_max_queue_size": "max_queue_size",
    "bsp_schedule_delay": "schedule_delay_ms",
    "bsp_max_export_batch_size": "max_export_batch_size",
    "timeout": "timeout_s",
}


def _export_setting(
    key: str, value: str, export: dict[str, object], resource: list[tuple[str, str]]
) -> None:
    if key == "resource":
        name, eq, attr = value.partition("=")
        if not eq or not name:
            raise ValueError(f"opentelemetry,resource={value}: expected KEY=VALUE")
        resource.append((name, attr))
    elif key == "url":
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"opentelemetry,url={value}: an http(s):// URL of an OTLP/HTTP collector, "
                "e.g. http://host:4318/v1/traces"
            )
        export["url"] = value
    elif key in _EXPORT_FIELDS:
        export[_EXPORT_FIELDS[key]] = _positive(f"opentelemetry,{key}", value, key == "timeout")
    else:
        raise ValueError(
            f"opentelemetry,{key}: unknown; use url, resource, " + ", ".join(_EXPORT_FIELDS)
        )


def _level(values: Sequence[str]) -> str:
    levels = {v.upper() for v in values}
    if "TENSORS" in levels:
        raise ValueError("trace level TENSORS is not offered; use TIMESTAMPS or OFF")
    unknown = levels - set(LEVELS)
    if unknown or not levels:
        raise ValueError(f"trace level {sorted(unknown) or values}: use OFF or TIMESTAMPS")
    return "TIMESTAMPS" if "TIMESTAMPS" in levels else "OFF"


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {value[:40]!r}") from None


def _rate(value: str) -> int:
    rate = _int("trace rate", value)
    if rate < 1:
        raise ValueError(f"trace rate must be >= 1 (1 traces every request), got {rate}")
    return rate


def _count(value: str) -> int:
    count = _int("trace count", value)
    if count < -1:
        raise ValueError(f"trace count must be -1 (no limit) or >= 0, got {count}")
    return count


def _positive(name: str, value: str, real: bool) -> float | int:
    try:
        number = float(value) if real else int(value)
    except ValueError:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return number


class Sampler:
    """One model's effective settings and its 1-in-N counter."""

    __slots__ = ("on", "rate", "seen", "budget")

    def __init__(self, on: bool, rate: int, budget: list[int]) -> None:
        self.on = on
        self.rate = rate
        self.seen = 0
        #: [traces left] shared with the scope that set trace_count (-1: no limit).
        self.budget = budget

    def sample(self) -> bool:
        """Whether this request is traced: the first of every ``rate``."""
        if not self.on:
            return False
        seen = self.seen
        self.seen = seen + 1 if seen + 1 < self.rate else 0
        if seen:
            return False
        left = self.budget[0]
        if left == 0:
            return False
        if left > 0:
            self.budget[0] = left - 1
        return True


class TraceSettings:
    """Global and per-model settings, and each model's sampler.

    ``on`` is False when no scope can trace (every level OFF or count spent):
    the one thing the request path checks while tracing is off."""

    def __init__(self, config: TraceConfig, known: Callable[[str], object | None]) -> None:
        self._start = config.scope
        self._global = config.scope
        self._models: dict[str, Scope] = {}
        self._known = known
        self._budgets: dict[str, list[int]] = {
            "": [-1 if config.scope.count is None else config.scope.count]
        }
        self._samplers: dict[str, Sampler] = {}
        self.on = False
        self._refresh()

    def sampler(self, model: str) -> Sampler:
        """The model's sampler; names the repository does not know share the
        global one (a client's made-up names never grow this table)."""
        sampler = self._samplers.get(model)
        if sampler is None:
            if model and self._known(model) is None:
                return self.sampler("")
            sampler = self._samplers[model] = self._build(model)
        return sampler

    def spent(self) -> None:
        """A budget reached 0: recompute ``on``."""
        self._refresh()

    def get(self, model: str = "") -> dict[str, list[str]]:
        self._check_model(model)
        scope = self._effective(model)
        owner = model if model in self._models and self._models[model].count is not None else ""
        return {
            "trace_level": [scope.level or "OFF"],
            "trace_rate": [str(scope.rate)],
            "trace_count": [str(self._budgets[owner][0])],
            "trace_mode": ["opentelemetry"],
            "trace_file": [],
            "log_frequency": [],
        }

    def update(
        self, model: str, updates: Mapping[str, Sequence[str] | None]
    ) -> dict[str, list[str]]:
        """Apply a TraceSetting request (a value of None or [] clears the
        setting) and return the settings now in force for ``model``."""
        self._check_model(model)
        changes: dict[str, object] = {}
        for key, values in updates.items():
            if key not in _RUNTIME_KEYS:
                raise InvalidInput(
                    f"unknown trace setting {key[:60]!r}; use one of " + ", ".join(_RUNTIME_KEYS)
                )
            if not values:
                if key in ("trace_level", "trace_rate", "trace_count"):
                    changes[key] = None
                continue
            try:
                changes[key] = self._value(key, values)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
        fields = {"trace_level": "level", "trace_rate": "rate", "trace_count": "count"}
        scope = self._models.get(model, Scope()) if model else self._global
        for key, value in changes.items():
            if key == "trace_mode":
                continue
            if value is None and not model:
                value = getattr(self._start, fields[key])
            scope = replace(scope, **{fields[key]: value})  # type: ignore[arg-type]
            if key == "trace_count":
                if value is None:
                    self._budgets.pop(model, None)
                else:
                    self._budgets[model] = [int(value)]  # type: ignore[call-overload]
        if model:
            self._models[model] = scope
        else:
            self._global = scope
        self._samplers.clear()
        self._refresh()
        return self.get(model)

    @staticmethod
    def _value(key: str, values: Sequence[str]) -> object:
        if key == "trace_level":
            return _level(values)
        if len(values) != 1:
            raise ValueError(f"{key} takes one value, got {len(values)}")
        (value,) = values
        if key == "trace_rate":
            return _rate(value)
        if key == "trace_count":
            return _count(value)
        if key == "trace_mode":
            if value != "opentelemetry":
                raise ValueError(f"trace_mode {value[:40]!r}: dlserve only has opentelemetry")
            return value
        raise ValueError(
            f"{key} belongs to Triton's trace-file mode; dlserve exports "
            "OpenTelemetry over OTLP (--trace-config opentelemetry,url=...)"
        )

    def _check_model(self, model: str) -> None:
        if model and self._known(model) is None:
            raise ModelNotFound(f"model '{model[:100]}' is not in the repository")

    def _effective(self, model: str) -> Scope:
        own = self._models.get(model, Scope())
        g = self._global
        return Scope(
            own.level or g.level,
            own.rate or g.rate,
            own.count if own.count is not None else g.count,
        )

    def _build(self, model: str) -> Sampler:
        scope = self._effective(model)
        owner = model if model in self._budgets and model else ""
        return Sampler(scope.level == "TIMESTAMPS", scope.rate or 1, self._budgets[owner])

    def _refresh(self) -> None:
        scopes = [("", self._global), *self._models.items()]
        self.on = any(
            self._effective(name).level == "TIMESTAMPS"
            and self._budgets[name if name in self._budgets and name else ""][0] != 0
            for name, _ in scopes
        )
