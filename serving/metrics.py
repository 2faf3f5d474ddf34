"""Prometheus metrics of one server, on a registry of its own.

Imports nothing from ``serving`` but its lockless histograms. Label
children are bound once per model version (``for_version``) so the request
path only calls ``observe``/``inc`` on prepared objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.lockless import LocklessFamily, LocklessHistogram, LocklessValue

#: Seconds. Fine enough to tell 50 µs from 500 µs, wide enough for seconds.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.000025, 0.00005, 0.000075, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005,
    0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Observer(Protocol):
    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """``exemplar``: labels (a trace id) kept with the bucket ``amount`` lands in."""


@dataclass(frozen=True, slots=True)
class VersionMetrics:
    """The label children of one model version, bound at load time."""

    request: Observer
    queue: Observer
    compute: Observer
    batch_size: Observer
    inflight: Gauge | LocklessValue
    ok: Counter | LocklessValue


class QueueDepths(Collector):
    """``dlserve_queue_depth``: each version's queued requests per priority
    level, read from its batcher at scrape time (nothing on the request
    path). In-process only: ``--workers`` processes do not report it."""

    def __init__(self) -> None:
        #: (model, version) -> the batcher's ``depths``, level 1 first.
        self.sources: dict[tuple[str, str], Callable[[], list[int]]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dlserve_queue_depth",
            "Requests waiting in the model's queue, by priority level (1 the highest; "
            "a model without priority levels has only level 1).",
            labels=["model", "version", "priority"],
        )  # fmt: skip
        for (model, version), depths in list(self.sources.items()):
            for level, depth in enumerate(depths(), start=1):
                family.add_metric([model, version, str(level)], float(depth))
        yield family


class Metrics:
    """Every metric family of the server. ``enabled=False`` records nothing."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        enabled: bool = True,
        lockless: bool = False,
    ) -> None:
        """``lockless``: histograms, request counters and the in-flight gauge
        updated from one thread only, without locks (``serving.lockless``);
        not for ``--workers`` processes."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.enabled = enabled
        r = self.registry
        Histogram: Any = LocklessHistogram if lockless else _Histogram  # noqa: N806

        def histogram(name: str, documentation: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, documentation, ["model", "version"], buckets=buckets,
                             registry=r)  # fmt: skip

        self.request_duration = histogram(
            "dlserve_request_duration_seconds",
            "End-to-end inference time in the server, from decoded request to encoded response.",
            LATENCY_BUCKETS,
        )
        self.queue_duration = histogram(
            "dlserve_queue_duration_seconds",
            "Time a request waited in the model's queue before its batch started.",
            LATENCY_BUCKETS,
        )
        self.compute_duration = histogram(
            "dlserve_compute_duration_seconds",
            "onnxruntime time of the batch that carried the request.",
            LATENCY_BUCKETS,
        )
        self.batch_size = histogram(
            "dlserve_batch_size",
            "Rows per onnxruntime run (one observation per executed batch).",
            BATCH_BUCKETS,
        )
        requests = ("dlserve_requests", "Inference requests answered, by gRPC status code name.")
        inflight = (
            "dlserve_inflight_requests", "Inference requests received and not yet answered."
        )  # fmt: skip
        self.requests: Any
        self.inflight: Any
        if lockless:
            self.requests = LocklessFamily("counter", *requests, ["model", "version", "code"],
                                           registry=r)  # fmt: skip
            self.inflight = LocklessFamily("gauge", *inflight, ["model"], registry=r)
        else:
            self.requests = Counter(*requests, ["model", "version", "code"], registry=r)
            self.inflight = Gauge(
                *inflight, ["model"], registry=r,
                multiprocess_mode="livesum",  # --workers N: the sum over live workers
            )  # fmt: skip
        self.model_ready = Gauge(
            "dlserve_model_ready",
            "1 when the model version is loaded and serving, else 0.",
            ["model", "version", "provider"], registry=r,
            multiprocess_mode="livemin",  # --workers N: ready only if every worker is
        )  # fmt: skip
        self.queue_depths = QueueDepths()
        r.register(self.queue_depths)
        self.cache_hits = Counter(
            "dlserve_cache_hits",
            "Requests answered from the response cache (models with response_cache enabled).",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.cache_misses = Counter(
            "dlserve_cache_misses",
            "Requests of models with response_cache enabled that the cache could not answer.",
            ["model", "version"], registry=r,
        )  # fmt: skip

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(
            request=self.request_duration.labels(model, version),
            queue=self.queue_duration.labels(model, version),
            compute=self.compute_duration.labels(model, version),
            batch_size=self.batch_size.labels(model, version),
            inflight=self.inflight.labels(model),
            ok=self.requests.labels(model, version, "OK"),
        )

    def for_cache(self, model: str, version: str) -> tuple[Counter, Counter]:
        """The hit and miss counters of a version whose answers are cached."""
        return self.cache_hits.labels(model, version), self.cache_misses.labels(model, version)

    def count(self, model: str, version: str, code: str) -> None:
        if self.enabled:
            self.requests.labels(model, version, code).inc()

    def set_ready(self, model: str, version: str, provider: str, ready: bool) -> None:
        # Readiness is state, not traffic: recorded even with metrics disabled.
        self.model_ready.labels(model, version, provider).set(1.0 if ready else 0.0)

    def watch_queue(self, model: str, version: str, depths: Callable[[], list[int]]) -> None:
        """Report a version's queue depth per priority level from ``depths``
        (not with metrics disabled: it describes traffic)."""
        if self.enabled:
            self.queue_depths.sources[(model, version)] = depths

    def forget_version(self, model: str, version: str) -> None:
        """Drop every series of a version that was retired (unloaded, replaced
        under the version policy, or gone from the repository), so the
        registry holds the versions that exist, not every one ever loaded."""
        self.queue_depths.sources.pop((model, version), None)
        for labels in list(self._ready_labels()):
            if labels[0] == model and labels[1] == version:
                self.model_ready.remove(*labels)
        for family in (self.request_duration, self.queue_duration, self.compute_duration,
                       self.batch_size, self.cache_hits, self.cache_misses):  # fmt: skip
            try:
                family.remove(model, version)
            except KeyError:
                pass
        for labels in list(self._request_labels()):
            if labels[0] == model and labels[1] == version:
                self.requests.remove(*labels)

    def _request_labels(self) -> set[tuple[str, ...]]:
        return {
            (s.labels["model"], s.labels["version"], s.labels["code"])
            for metric in self.requests.collect()
            for s in metric.samples
        }

    def _ready_labels(self) -> list[tuple[str, ...]]:
        return [
            (s.labels["model"], s.labels["version"], s.labels["provider"])
            for metric in self.model_ready.collect()
            for s in metric.samples
        ]
