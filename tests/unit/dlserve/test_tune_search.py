"""The search of ``dlserve tune`` on a synthetic measurement function: the
climb finds the best point within the budget, visits fewer points than the
grid, never recommends a level over the budget; and the Pareto frontier."""

from __future__ import annotations

import math
from typing import Callable

import pytest

from dlserve.tune_search import (
    Climb,
    Dimension,
    Level,
    Point,
    Rank,
    Space,
    best_level,
    pareto_front,
    rank,
    settle,
)

SPACE = Space(
    (
        Dimension("batch", (1, 2, 4, 8, 16, 32, 64)),
        Dimension("delay", (0, 1, 2, 3, 4)),
        Dimension("instances", (1, 2, 3, 4)),
    )
)
CONCURRENCY = (1, 8, 32)


def levels_of(point: Point, budget: float) -> list[Level]:
    """A unimodal model: throughput peaks at batch 16, delay 2, instances 3;
    latency grows with batch, delay and concurrency. Levels stop after the
    first over the budget, as tune's sweep does."""
    batch, delay, instances = point
    peak = 1000 - 40 * (math.log2(batch) - 4) ** 2 - 30 * (delay - 2) ** 2
    peak -= 20 * (instances - 3) ** 2
    base_p99 = 0.25 * batch + delay
    levels = []
    for c in CONCURRENCY:
        level = Level(c, peak * c / (c + 4), base_p99 * (1 + c / 8), 0)
        levels.append(level)
        if not level.within(budget):
            break
    return levels


def exhaustive_best(budget: float) -> tuple[Point, float]:
    """What a blind grid search would pick."""
    scored = []
    for point in SPACE.grid():
        best = best_level(levels_of(point, budget), budget)
        if best is not None:
            scored.append((best.throughput, point))
    throughput, point = max(scored)
    return point, throughput


def climb(budget: float, min_gain: float = 0.0) -> tuple[Climb, list[Point]]:
    calls: list[Point] = []

    def evaluate(point: Point) -> list[Level]:
        calls.append(point)
        return levels_of(point, budget)

    search = Climb(SPACE, evaluate, budget, min_gain)
    search.run()
    return search, calls


def test_the_climb_finds_the_grids_best_point_with_fewer_measurements() -> None:
    search, calls = climb(budget=1000.0)  # every level within budget
    want, _ = exhaustive_best(1000.0)
    assert search.best() == want == (16, 2, 3)
    assert len(calls) == len(set(calls)), "a point was measured twice"
    assert len(calls) < len(SPACE.grid()) / 3, (len(calls), len(SPACE.grid()))
    # the path starts at the small corner and each step moves along one dimension
    assert search.path[0] == (1, 0, 1)
    for a, b in zip(search.path, search.path[1:], strict=False):
        assert sum(x != y for x, y in zip(a, b, strict=True)) == 1


def test_a_tight_budget_is_respected_and_the_best_feasible_point_found() -> None:
    budget = 6.0
    search, calls = climb(budget)
    best = search.best()
    assert best is not None
    level = best_level(search.results[best], budget)
    assert level is not None and level.p99_ms <= budget
    # not vacuous: the climb measured levels over the budget and did not pick them
    over = [lv for lvs in search.results.values() for lv in lvs if lv.p99_ms > budget]
    assert over and max(lv.throughput for lv in over) > level.throughput
    assert (best, level.throughput) == exhaustive_best(budget)
    assert len(calls) < len(SPACE.grid())


def test_nothing_within_budget_means_no_best_and_the_climb_walks_to_lower_latency() -> None:
    space = Space((Dimension("batch", (8, 4, 2, 1)),))  # starts at the slow end

    def evaluate(point: Point) -> list[Level]:
        return [Level(1, 100.0, 10.0 * point[0], 0)]

    search = Climb(space, evaluate, budget_ms=1.0)
    assert search.run() is None
    assert search.path == [(8,), (4,), (2,), (1,)]


def test_an_unmeasured_point_ranks_below_every_measured_one() -> None:
    assert rank([], 5.0) == Rank(0, 0.0)
    assert rank([Level(1, 10.0, 50.0, 0)], 5.0).beats(rank([], 5.0), 0.0)
    assert rank([Level(1, 10.0, 1.0, 0)], 5.0).beats(rank([Level(1, 1e6, 50.0, 0)], 5.0), 0.0)
    # a level with errors is not within budget, however fast
    assert not Level(8, 1e6, 1.0, errors=3).within(5.0)
    assert best_level([Level(8, 1e6, 1.0, errors=3), Level(1, 10.0, 2.0, 0)], 5.0) == Level(
        1, 10.0, 2.0, 0
    )


def test_min_gain_stops_the_climb_on_a_step_smaller_than_it() -> None:
    space = Space((Dimension("x", (1, 2, 3)),))
    throughput = {1: 100.0, 2: 101.0, 3: 150.0}

    def evaluate(point: Point) -> list[Level]:
        return [Level(1, throughput[point[0]], 1.0, 0)]

    assert Climb(space, evaluate, 5.0, min_gain=0.0).run() == (3,)
    cautious = Climb(space, evaluate, 5.0, min_gain=0.05)
    assert cautious.run() == (2,)  # the best measured point, though the climb stopped at 1
    assert cautious.path == [(1,)] and set(cautious.results) == {(1,), (2,)}


def test_canonical_points_prune_what_cannot_differ() -> None:
    def canonical(point: dict[str, int]) -> dict[str, int]:
        if point["batch"] == 1:
            point["delay"] = 0
        return point

    space = Space((Dimension("batch", (1, 8)), Dimension("delay", (0, 100, 500))), canonical)
    assert space.start() == (1, 0)
    assert space.neighbours((1, 0)) == [(8, 0)]
    assert sorted(space.grid()) == [(1, 0), (8, 0), (8, 100), (8, 500)]


def test_dimensions_refuse_empty_or_repeated_values() -> None:
    with pytest.raises(ValueError, match="no values"):
        Dimension("x", ())
    with pytest.raises(ValueError, match="repeats"):
        Dimension("x", (1, 1))


@pytest.mark.parametrize(
    ("points", "front"),
    [
        ([], []),
        ([(1.0, 10.0)], [0]),
        # (p99, throughput): 1 dominates 0 (faster and more), 3 is dominated by 2
        ([(5.0, 10.0), (4.0, 20.0), (6.0, 30.0), (7.0, 25.0), (9.0, 40.0)], [1, 2, 4]),
        # equal p99: only the higher throughput; equal throughput: only the lower p99
        ([(2.0, 5.0), (2.0, 8.0), (3.0, 8.0)], [1]),
        # points that were not measured (nan) are left out
        ([(float("nan"), 100.0), (1.0, 1.0)], [1]),
    ],
)
def test_pareto_front(points: list[tuple[float, float]], front: list[int]) -> None:
    assert pareto_front(points) == front


def test_pareto_front_is_exactly_the_undominated_points() -> None:
    import random

    rng = random.Random(0)
    points = [(rng.uniform(1, 50), rng.uniform(10, 1000)) for _ in range(200)]
    front = set(pareto_front(points))

    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(
            (a <= x and b >= y) and (a < x or b > y) for j, (a, b) in enumerate(points) if j != i
        )

    assert front == {i for i in range(len(points)) if not dominated(i)}
    assert 0 < len(front) < len(points)


def windows_of(*measured: tuple[float, float]) -> tuple[list[int], Callable[[int], Level]]:
    """A window function answering (throughput, p99) in turn; the calls it got."""
    calls: list[int] = []

    def window(i: int) -> Level:
        calls.append(i)
        throughput, p99 = measured[i]
        return Level(8, throughput, p99, 0)

    return calls, window


def test_settle_measures_until_two_windows_agree_and_averages_them() -> None:
    calls, window = windows_of((500.0, 9.0), (1000.0, 4.0), (1040.0, 4.2), (0.0, 0.0))
    level = settle(window, 0.10, 10)
    assert calls == [0, 1, 2]  # 500 vs 1000 disagree; 1000 vs 1040 agree within 10 %
    assert level == Level(8, 1020.0, 4.1, 0, windows=3)


def test_settle_needs_both_throughput_and_p99_to_agree() -> None:
    calls, window = windows_of((1000.0, 4.0), (1000.0, 8.0), (1000.0, 8.1))
    assert settle(window, 0.10, 10).windows == 3


def test_settle_stops_at_max_windows_with_the_last_one() -> None:
    calls, window = windows_of((100.0, 1.0), (300.0, 1.0), (900.0, 1.0), (2700.0, 1.0))
    assert settle(window, 0.10, 3) == Level(8, 900.0, 1.0, 0, windows=3)
    assert calls == [0, 1, 2]


def test_settle_with_stability_0_measures_one_window() -> None:
    calls, window = windows_of((100.0, 1.0), (900.0, 1.0))
    assert settle(window, 0.0, 5) == Level(8, 100.0, 1.0, 0)
    assert calls == [0]
