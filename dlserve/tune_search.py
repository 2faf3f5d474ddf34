"""The search of ``dlserve tune``: a hill climb over a coordinate space, as
Model Analyzer's quick search does, and the Pareto frontier of what was measured.

The space is a few dimensions, each an ordered list of values (max_batch_size
1, 2, 4, ...; queue delays; instance counts). The climb starts at the small
corner (each dimension's first value), measures the point and its neighbours
(one step up or down along one dimension), moves to the best neighbour if it
beats the current point, and stops when none does. It visits a path through
the space and the points beside it, never the whole grid.

A point is ranked by its load levels (one per concurrency): the highest
throughput among the levels whose p99 is within the latency budget and that
had no errors. A point with no such level ranks below every point with one,
and among themselves by their lowest p99, so a climb that starts over budget
walks toward lower latency. A point that could not be measured at all (its
server failed to load the model) ranks lowest.

Nothing here measures: ``evaluate`` is given (``dlserve.tune`` passes one that
starts a server and drives it with ``dlserve.bench``; the unit tests pass a
synthetic function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

__all__ = [
    "Climb",
    "Dimension",
    "Level",
    "Point",
    "Rank",
    "Space",
    "best_level",
    "pareto_front",
    "rank",
    "settle",
]

#: One value per dimension, in the space's order.
Point = tuple[int, ...]


@dataclass(frozen=True)
class Dimension:
    name: str
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"dimension {self.name!r} has no values")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"dimension {self.name!r} repeats a value: {self.values}")


def _same(point: dict[str, int]) -> dict[str, int]:
    return point


@dataclass(frozen=True)
class Space:
    """Dimensions, and ``canonical``: maps a point to the one it is equivalent
    to (e.g. with max_batch_size 1 the queue delay cannot matter, so every
    delay is the first), which prunes the points that would measure the same."""

    dimensions: tuple[Dimension, ...]
    canonical: Callable[[dict[str, int]], dict[str, int]] = _same

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def as_dict(self, point: Point) -> dict[str, int]:
        return dict(zip(self.names, point, strict=True))

    def _point(self, values: Mapping[str, int]) -> Point:
        fixed = self.canonical(dict(values))
        return tuple(fixed[name] for name in self.names)

    def start(self) -> Point:
        return self._point({d.name: d.values[0] for d in self.dimensions})

    def neighbours(self, point: Point) -> list[Point]:
        """The distinct points one step away along one dimension."""
        found: list[Point] = []
        for i, dim in enumerate(self.dimensions):
            at = dim.values.index(point[i])
            for step in (-1, 1):
                if 0 <= at + step < len(dim.values):
                    moved = list(point)
                    moved[i] = dim.values[at + step]
                    other = self._point(self.as_dict(tuple(moved)))
                    if other != point and other not in found:
                        found.append(other)
        return found

    def grid(self) -> list[Point]:
        """Every distinct point (what a blind grid search would measure)."""
        points: list[Point] = [()]
        for dim in self.dimensions:
            points = [(*p, v) for p in points for v in dim.values]
        distinct: dict[Point, None] = {}
        for p in points:
            distinct[self._point(self.as_dict(p))] = None
        return list(distinct)


@dataclass(frozen=True)
class Level:
    """One load level of one point: concurrency, throughput (req/s), p99 (ms)."""

    concurrency: int
    throughput: float
    p99_ms: float
    #: Failed requests. No default: a level that forgot them would pass
    #: ``within`` as clean.
    errors: int

    #: Measuring windows it took (see `settle`).
    windows: int = 1

    def within(self, budget_ms: float) -> bool:
        return self.errors == 0 and math.isfinite(self.p99_ms) and self.p99_ms <= budget_ms


def _agree(a: Level, b: Level, stability: float) -> bool:
    def close(x: float, y: float) -> bool:
        return math.isfinite(x) and math.isfinite(y) and abs(x - y) <= stability * max(x, y)

    return close(a.throughput, b.throughput) and close(a.p99_ms, b.p99_ms)


def settle(window: Callable[[int], Level], stability: float, max_windows: int) -> Level:
    """perf_analyzer's stability rule for one level: measure windows
    (``window(i)``, i from 0) until two in a row agree within ``stability``
    (a fraction) in both throughput and p99, at most ``max_windows``; the mean
    of the last two (their errors summed), or the last window if none agreed.
    ``stability`` 0 or ``max_windows`` 1: one window."""
    last = window(0)
    count = 1
    while stability > 0 and count < max_windows:
        latest = window(count)
        count += 1
        if _agree(last, latest, stability):
            return Level(latest.concurrency, (last.throughput + latest.throughput) / 2,
                         (last.p99_ms + latest.p99_ms) / 2, last.errors + latest.errors,
                         count)  # fmt: skip
        last = latest
    return Level(last.concurrency, last.throughput, last.p99_ms, last.errors, count)


def best_level(levels: Sequence[Level], budget_ms: float) -> Level | None:
    """The level with the highest throughput within the budget, if any."""
    good = [lv for lv in levels if lv.within(budget_ms)]
    return max(good, key=lambda lv: lv.throughput) if good else None


@dataclass(frozen=True, order=True)
class Rank:
    """Compares points: ``tier`` 2 within budget (``value`` = throughput),
    1 measured but over budget (``value`` = -lowest p99), 0 not measured."""

    tier: int
    value: float

    def beats(self, other: "Rank", min_gain: float) -> bool:
        """Better by more than ``min_gain`` (a fraction), so noise does not move the climb."""
        if self.tier != other.tier:
            return self.tier > other.tier
        return self.value > other.value + abs(other.value) * min_gain


def rank(levels: Sequence[Level], budget_ms: float) -> Rank:
    best = best_level(levels, budget_ms)
    if best is not None:
        return Rank(2, best.throughput)
    p99s = [lv.p99_ms for lv in levels if math.isfinite(lv.p99_ms)]
    if p99s:
        return Rank(1, -min(p99s))
    return Rank(0, 0.0)


@dataclass
class Climb:
    """A hill climb in progress: ``results`` holds every point measured so
    far, in order, so an interrupted climb still has them."""

    space: Space
    evaluate: Callable[[Point], Sequence[Level]]
    budget_ms: float
    #: A neighbour must beat the current point by this fraction to be taken.
    min_gain: float = 0.0
    results: dict[Point, list[Level]] = field(default_factory=dict)
    #: The points the climb stood on, from the start.
    path: list[Point] = field(default_factory=list)

    def _measure(self, point: Point) -> Rank:
        if point not in self.results:
            self.results[point] = list(self.evaluate(point))
        return rank(self.results[point], self.budget_ms)

    def run(self) -> Point | None:
        """Climb until no neighbour beats the current point; the best point."""
        current = self.space.start()
        self.path.append(current)
        here = self._measure(current)
        while True:
            ranked = [(self._measure(n), n) for n in self.space.neighbours(current)]
            if not ranked:
                break
            top, step = max(ranked, key=lambda item: item[0])
            if not top.beats(here, self.min_gain):
                break
            current, here = step, top
            self.path.append(current)
        return self.best()

    def best(self) -> Point | None:
        """The measured point with the highest throughput within the budget."""
        scored = [(rank(lv, self.budget_ms), p) for p, lv in self.results.items()]
        good = [(r, p) for r, p in scored if r.tier == 2]
        return max(good, key=lambda item: item[0])[1] if good else None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (p99, throughput) points no other point dominates (a
    p99 as low and a throughput as high, one of them strictly), by rising p99."""
    order = sorted(
        (i for i, (p99, tput) in enumerate(points) if math.isfinite(p99) and math.isfinite(tput)),
        key=lambda i: (points[i][0], -points[i][1]),
    )
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
