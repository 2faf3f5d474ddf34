"""The live page's figures (``/api/stats``), computed from the server's
Prometheus registry: per model, over the last few seconds, throughput,
p50/p99 latency, errors by code, batch sizes, in-flight and readiness, plus
a short history. ``LiveStats`` reads the registry only when the page asks,
so a server nobody watches pays nothing for it.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry

StartResponse = Callable[..., Any]

#: Seconds of traffic each live figure covers (a sliding window).
LIVE_WINDOW = 5.0
#: Seconds of history ``/api/stats`` returns for the charts.
LIVE_HISTORY = 180.0
#: Registry reads closer together than this reuse the last one.
_MIN_SPACING = 0.5

_UNKNOWN_MODEL = ""  # failures naming a model the server does not know


# -- live statistics -------------------------------------------------------------------


@dataclass
class _Histogram:
    """Cumulative bucket counts of one histogram, summed over versions."""

    bounds: list[float] = field(default_factory=list)  # upper bounds, +Inf last
    cumulative: list[float] = field(default_factory=list)
    total: float = 0.0
    sum: float = 0.0

    def add(self, le: float, count: float) -> None:
        i = bisect.bisect_left(self.bounds, le)
        if i < len(self.bounds) and self.bounds[i] == le:
            self.cumulative[i] += count
        else:
            self.bounds.insert(i, le)
            self.cumulative.insert(i, count)

    def minus(self, base: _Histogram | None) -> _Histogram:
        if base is None or base.bounds != self.bounds:
            return self
        return _Histogram(
            self.bounds,
            [max(a - b, 0.0) for a, b in zip(self.cumulative, base.cumulative, strict=True)],
            max(self.total - base.total, 0.0),
            max(self.sum - base.sum, 0.0),
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' histogram_quantile: linear inside the bucket."""
        if not self.cumulative or self.cumulative[-1] <= 0:
            return None
        rank = q * self.cumulative[-1]
        i = bisect.bisect_left(self.cumulative, rank)
        if math.isinf(self.bounds[i]):
            return self.bounds[i - 1] if i > 0 else None
        lower = self.bounds[i - 1] if i > 0 else 0.0
        below = self.cumulative[i - 1] if i > 0 else 0.0
        inside = self.cumulative[i] - below
        if inside <= 0:
            return self.bounds[i]
        return lower + (self.bounds[i] - lower) * (rank - below) / inside

    def per_bucket(self) -> list[tuple[float, float]]:
        """(upper bound, count) per bucket, not cumulative."""
        out: list[tuple[float, float]] = []
        previous = 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            out.append((bound, cumulative - previous))
            previous = cumulative
        return out


@dataclass
class _ModelCounters:
    """Cumulative counts of one model (all versions) at one moment."""

    codes: dict[str, float] = field(default_factory=dict)
    request: _Histogram = field(default_factory=_Histogram)
    queue: _Histogram = field(default_factory=_Histogram)
    compute: _Histogram = field(default_factory=_Histogram)
    batch: _Histogram = field(default_factory=_Histogram)
    created: float = math.inf  # wall time its first series appeared
    inflight: float = 0.0
    #: Queued requests by priority level (summed over versions).
    queued: dict[str, float] = field(default_factory=dict)
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Snapshot:
    time: float  # wall clock, seconds
    models: dict[str, _ModelCounters]


_HISTOGRAMS = {
    "dlserve_request_duration_seconds": "request",
    "dlserve_queue_duration_seconds": "queue",
    "dlserve_compute_duration_seconds": "compute",
    "dlserve_batch_size": "batch",
}


def _read(registry: CollectorRegistry, now: float) -> _Snapshot:
    models: dict[str, _ModelCounters] = {}

    def of(labels: dict[str, str]) -> _ModelCounters:
        name = labels.get("model", _UNKNOWN_MODEL)
        counters = models.get(name)
        if counters is None:
            counters = models[name] = _ModelCounters()
        return counters

    for family in registry.collect():
        attr = _HISTOGRAMS.get(family.name)
        for s in family.samples:
            m = of(s.labels)
            if attr is not None:
                hist: _Histogram = getattr(m, attr)
                if s.name.endswith("_bucket"):
                    hist.add(float(s.labels["le"]), s.value)
                elif s.name.endswith("_count"):
                    hist.total += s.value
                elif s.name.endswith("_sum"):
                    hist.sum += s.value
                elif s.name.endswith("_created"):
                    m.created = min(m.created, s.value)
            elif family.name == "dlserve_requests":
                if s.name.endswith("_total"):
                    code = s.labels.get("code", "")
                    m.codes[code] = m.codes.get(code, 0.0) + s.value
                elif s.name.endswith("_created"):
                    m.created = min(m.created, s.value)
            elif family.name == "dlserve_inflight_requests":
                m.inflight += s.value
            elif family.name == "dlserve_queue_depth":
                level = s.labels.get("priority", "1")
                m.queued[level] = m.queued.get(level, 0.0) + s.value
            elif family.name == "dlserve_model_ready":
                m.versions[s.labels.get("version", "")] = {
                    "version": s.labels.get("version", ""),
                    "provider": s.labels.get("provider", ""),
                    "ready": s.value >= 1.0,
                }
    return _Snapshot(now, models)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 4)


def _window(now: _ModelCounters, base: _ModelCounters | None, seconds: float) -> dict[str, Any]:
    """What one model did between ``base`` (None: nothing yet) and ``now``."""
    b = base if base is not None else _ModelCounters()
    codes = {c: max(v - b.codes.get(c, 0.0), 0.0) for c, v in now.codes.items()}
    request = now.request.minus(base.request if base else None)
    queue = now.queue.minus(base.queue if base else None)
    compute = now.compute.minus(base.compute if base else None)
    batch = now.batch.minus(base.batch if base else None)
    errors = {c: v / seconds for c, v in sorted(codes.items()) if c != "OK" and v > 0}
    return {
        "throughput_rps": codes.get("OK", 0.0) / seconds,
        "errors_rps": sum(errors.values()),
        "errors_by_code": errors,
        "p50_ms": _ms(request.quantile(0.50)),
        "p99_ms": _ms(request.quantile(0.99)),
        "queue_p50_ms": _ms(queue.quantile(0.50)),
        "compute_p50_ms": _ms(compute.quantile(0.50)),
        "mean_batch": batch.sum / batch.total if batch.total > 0 else None,
        "batches": [
            {"le": None if math.isinf(le) else le, "per_second": n / seconds}
            for le, n in batch.per_bucket()
        ],
    }


class LiveStats:
    """Windowed per-model figures from cumulative registry counts.

    Each ``stats()`` call reads the registry (at most every half second) and
    compares it with the read about ``LIVE_WINDOW`` seconds earlier. Before
    there is an earlier read, a model's figures cover the time since its
    series were created (the average since load)."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._snapshots: deque[_Snapshot] = deque()
        self._history: deque[dict[str, Any]] = deque()
        self._clock = clock

    def _base(self, latest: _Snapshot) -> _Snapshot | None:
        older = [s for s in self._snapshots if s.time <= latest.time - _MIN_SPACING]
        if not older:
            return None
        within = [s for s in older if s.time <= latest.time - LIVE_WINDOW]
        return within[-1] if within else older[0]

    def _take(self) -> _Snapshot:
        if self._snapshots and self._clock() - self._snapshots[-1].time < _MIN_SPACING:
            return self._snapshots[-1]
        snap = _read(self.registry, self._clock())
        self._snapshots.append(snap)
        # Keep one read older than the window: the base of the next figures.
        while len(self._snapshots) > 2 and self._snapshots[1].time <= snap.time - LIVE_WINDOW:
            self._snapshots.popleft()
        return snap

    def stats(self) -> dict[str, Any]:
        with self._lock:
            fresh = not self._snapshots or self._clock() - self._snapshots[-1].time >= _MIN_SPACING
            latest = self._take()
            base = self._base(latest)
            models = []
            for name in sorted(latest.models, key=lambda n: (n == _UNKNOWN_MODEL, n)):
                now = latest.models[name]
                if base is not None and name in base.models:
                    before: _ModelCounters | None = base.models[name]
                    seconds = latest.time - base.time
                elif math.isfinite(now.created):
                    before, seconds = None, latest.time - now.created
                else:
                    before, seconds = None, 0.0
                figures = _window(now, before, max(seconds, 1e-3))
                models.append({
                    "model": name,
                    "versions": [now.versions[v] for v in sorted(now.versions, key=_version_key)],
                    "inflight": now.inflight,
                    "queued_by_priority": {
                        p: now.queued[p] for p in sorted(now.queued, key=int)},
                    "requests_total": sum(now.codes.values()),
                    "errors_total": sum(v for c, v in now.codes.items() if c != "OK"),
                    "window_seconds": round(seconds, 3),
                    **figures,
                })  # fmt: skip
            if fresh:
                self._history.append({
                    "time": latest.time,
                    "models": {
                        m["model"]: {k: m[k] for k in (
                            "throughput_rps", "errors_rps", "p50_ms", "p99_ms", "mean_batch")}
                        for m in models
                    },
                })  # fmt: skip
                while self._history and self._history[0]["time"] < latest.time - LIVE_HISTORY:
                    self._history.popleft()
            return {
                "time": latest.time,
                "window_seconds": LIVE_WINDOW,
                "models": models,
                "history": list(self._history),
            }

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = json.dumps(self.stats(), allow_nan=False).encode()
        start_response("200 OK", [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ])  # fmt: skip
        return [body]


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
