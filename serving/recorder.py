"""Where a request is counted: one ``VersionRecorder`` per serving model
version, bound at load time, feeds both books, the Prometheus metrics
(``metrics.VersionMetrics``) and the ModelStatistics counters
(``stats.VersionStats``). The service calls it for every outcome; nothing
else records requests.

Failures of requests that name no serving version (unknown model, a version
that is not loaded) go to ``Metrics.count`` with labels bounded to what the
repository knows (``failure_labels``), so a client cannot grow the label set.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import Counter

from serving.metrics import Metrics, VersionMetrics
from serving.stats import VersionStats
from serving.versions import parse_version


class VersionRecorder:
    """Both books of one model version. Hot-path calls do no label lookups."""

    __slots__ = ("model", "version", "stats", "_m", "_count", "_hits", "_misses")

    def __init__(self, metrics: Metrics, model: str, version: str, cached: bool = False) -> None:
        """``cached``: its answers go through the response cache (its hit
        and miss counters exist only then)."""
        self.model = model
        self.version = version
        self.stats = VersionStats()
        self._m: VersionMetrics | None = (
            metrics.for_version(model, version) if metrics.enabled else None
        )
        self._count: Callable[[str, str, str], None] = metrics.count
        counters = metrics.for_cache(model, version) if cached and metrics.enabled else None
        self._hits: Counter | None = counters[0] if counters is not None else None
        self._misses: Counter | None = counters[1] if counters is not None else None

    def started(self) -> None:
        """A request was queued (it is in flight until ``success``/``failure``)."""
        if self._m is not None:
            self._m.inflight.inc()

    def batch(self, rows: int, compute: float) -> None:
        """One onnxruntime run of ``rows`` rows took ``compute`` seconds."""
        self.stats.record_batch(rows, compute)
        if self._m is not None:
            self._m.batch_size.observe(rows)

    def success(
        self, rows: int, total: float, prep: float, queue: float, compute: float, post: float,
        trace_id: str | None = None,
    ) -> None:  # fmt: skip
        """``trace_id``: the request's trace (sampled), kept as the exemplar
        of its request-duration bucket."""
        self.stats.record_success(rows, total, prep, queue, compute, post)
        m = self._m
        if m is not None:
            m.inflight.dec()
            if trace_id is None:
                m.request.observe(total)
            else:
                m.request.observe(total, {"trace_id": trace_id})
            m.queue.observe(queue)
            m.compute.observe(compute)
            m.ok.inc()

    def cache_hit(self, total: float, lookup: float) -> None:
        """Answered from the response cache, ``total`` seconds after it
        arrived, ``lookup`` of them in the cache."""
        self.stats.record_cache_hit(total, lookup)
        m = self._m
        if m is not None:
            m.request.observe(total)
            m.ok.inc()
        if self._hits is not None:
            self._hits.inc()

    def cache_miss(self, seconds: float) -> None:
        """Answered by the model after a cache miss; ``seconds``: the lookup
        and the insert."""
        self.stats.cache_miss.add(seconds)
        if self._misses is not None:
            self._misses.inc()

    def failure(self, code: str, total: float | None = None) -> None:
        """A request of this version failed with status ``code``. ``total``:
        seconds since it arrived, for a request that was ``started`` (queued);
        None for one refused before (validation), which statistics do not
        count as an inference failure."""
        if total is not None:
            self.stats.record_failure(total)
            if self._m is not None:
                self._m.inflight.dec()
        self._count(self.model, self.version, code)


def failure_labels(known: Callable[[str], frozenset[int] | None], default: Callable[[str], str],
                   name: str, version: str) -> tuple[str, str]:  # fmt: skip
    """Labels for a failure that names no serving version: the model if the
    repository knows it, the version if it is one of the model's (or, when
    none was named, the version the request would have run on)."""
    versions = known(name)
    if versions is None:
        return "", ""
    if not version:
        return name, default(name)
    number = parse_version(version)
    if number is not None and number in versions:
        return name, str(number)
    return name, ""
