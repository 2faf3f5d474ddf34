"""Histograms, counters and gauges without locks, for a server whose
observations all happen on one thread (the event loop): a bisect and two
additions per observation, one addition per ``inc``, where prometheus_client
takes a lock per value (measured: see docs/performance.md, "metrics").

Scrapes (another thread) copy a child's counts in one step under the GIL,
so a scrape's ``+Inf`` bucket always equals its ``_count``; the ``_sum`` may
lag one observation. ``--workers N`` cannot use them (each worker's values
must reach the supervisor's multiprocess files): ``Metrics`` picks
prometheus_client's histograms there.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString


class LocklessChild:
    __slots__ = ("_bounds", "counts", "sum", "created", "exemplars")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created = time.time()  # the `_created` sample, as prometheus_client writes it
        #: bucket index -> the latest exemplar that landed there (traced requests).
        self.exemplars: dict[int, Exemplar] = {}

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        index = bisect_left(self._bounds, amount)
        self.counts[index] += 1
        self.sum += amount
        if exemplar is not None:
            self.exemplars[index] = Exemplar(exemplar, amount, time.time())


class LocklessHistogram(Collector):
    """One histogram family labelled (model, version), registered in ``registry``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        """The arguments of prometheus_client's Histogram; labels must be
        (model, version)."""
        if tuple(labelnames) != ("model", "version"):
            raise ValueError(f"lockless histograms are labelled (model, version), not {labelnames}")
        self.name = name
        self.documentation = documentation
        bounds = tuple(float(b) for b in buckets)
        self._bounds = bounds if bounds[-1] == float("inf") else (*bounds, float("inf"))
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._children: dict[tuple[str, str], LocklessChild] = {}
        registry.register(self)

    def labels(self, model: str, version: str) -> LocklessChild:
        child = self._children.get((model, version))
        if child is None:
            child = self._children[(model, version)] = LocklessChild(self._bounds)
        return child

    def remove(self, model: str, version: str) -> None:
        del self._children[(model, version)]

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["model", "version"])]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model", "version"])
        for (model, version), child in list(self._children.items()):
            counts = list(child.counts)
            exemplars = dict(child.exemplars)
            total = 0
            buckets: list[Any] = []
            for index, (le, count) in enumerate(zip(self._le, counts, strict=True)):
                total += count
                exemplar = exemplars.get(index)
                if exemplar is None:
                    buckets.append((le, float(total)))
                else:
                    buckets.append((le, float(total), exemplar))
            family.add_metric([model, version], buckets, child.sum)
            family.samples.append(
                Sample(f"{self.name}_created", {"model": model, "version": version}, child.created)
            )
        yield family


class LocklessValue:
    """One series of a lockless counter or gauge."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class LocklessFamily(Collector):
    """A counter (``kind="counter"``, exposed as ``NAME_total`` and
    ``NAME_created`` as prometheus_client writes them) or gauge family with
    any label names, registered in ``registry``."""

    def __init__(
        self,
        kind: str,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        if kind not in ("counter", "gauge"):
            raise ValueError(f"kind must be 'counter' or 'gauge', not {kind!r}")
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], LocklessValue] = {}
        registry.register(self)

    def labels(self, *values: str) -> LocklessValue:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = LocklessValue()
        return child

    def remove(self, *values: str) -> None:
        del self._children[values]

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.name, self.documentation, labels=list(self.labelnames))

    def describe(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        family = self._family()
        for labels, child in list(self._children.items()):
            if isinstance(family, CounterMetricFamily):
                family.add_metric(list(labels), child.value, created=child.created)
            else:
                family.add_metric(list(labels), child.value)
        yield family
