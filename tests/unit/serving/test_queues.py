"""Triton's priority levels and queue policies (serving.queues) through the
DynamicBatcher's public interface: a gated fake runtime holds the one worker
busy while requests queue, an injected clock moves time; no sleeps."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest
from google.protobuf import text_format

from serving._generated import model_config_pb2 as mc
from serving.batcher import DynamicBatcher
from serving.errors import ModelLoadError, QueueFull, QueueTimeout
from serving.queues import QueueSetup, setup_of
from tests.unit.serving.batcher_helpers import FakeClock, FakeRuntime, rows, started


def setup(text: str, server_limit: int = 0) -> QueueSetup:
    db = text_format.Parse(text, mc.ModelDynamicBatching())
    return setup_of(db, server_limit)


@pytest.fixture
def executor():
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


def batcher(queue: QueueSetup, runtime: FakeRuntime, executor, clock=None) -> DynamicBatcher:  # type: ignore[no-untyped-def]
    return DynamicBatcher(runtime.run, max_batch_size=1, workers=1, executor=executor,
                          queue=queue, clock=clock)  # fmt: skip


async def order_of(futures) -> list[float]:  # type: ignore[no-untyped-def]
    """The values of the requests in the order they ran (one per batch)."""
    results = await asyncio.gather(*futures)
    ran = sorted(zip(results, range(len(results)), strict=True),
                 key=lambda pair: pair[0].outputs[1][0, 0])  # fmt: skip
    return [float(result.outputs[0][0, 0]) / 2 for result, _ in ran]


THREE_LEVELS = "priority_levels: 3 default_priority_level: 2"


def test_higher_priority_levels_run_first_and_order_holds_within_a_level(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = batcher(setup(THREE_LEVELS), runtime, executor)
        busy = b.submit(rows(0), 1)
        await started(runtime)
        queued = [
            b.submit(rows(1), 1, priority=3),
            b.submit(rows(2), 1, priority=0),  # 0: the default level, 2
            b.submit(rows(3), 1, priority=1),
            b.submit(rows(4), 1, priority=2),
            b.submit(rows(5), 1, priority=9),  # above the levels: the default, 2
            b.submit(rows(6), 1, priority=1),
        ]
        assert b.depths() == [2, 3, 1]
        runtime.gate.set()
        assert await order_of([busy, *queued]) == [0, 3, 6, 2, 4, 5, 1]
        assert b.depths() == [0, 0, 0]
        await b.close()

    asyncio.run(main())


def test_a_reject_timeout_answers_unavailable_unrun(executor) -> None:
    async def main() -> None:
        clock = FakeClock()
        runtime = FakeRuntime(gated=True)
        queue = setup("default_queue_policy { timeout_action: REJECT "
                      "default_timeout_microseconds: 1000000 }")  # fmt: skip
        b = batcher(queue, runtime, executor, clock)
        busy = b.submit(rows(0), 1)
        await started(runtime)
        late = b.submit(rows(1), 1)
        clock.advance(0.5)
        fine = b.submit(rows(2), 1)
        clock.advance(0.7)  # the first waited 1.2 s, the second 0.7 s
        runtime.gate.set()
        await busy
        with pytest.raises(QueueTimeout):
            await late
        assert (await fine).outputs[0][0, 0] == 4.0
        assert runtime.batches == [1, 1]  # the rejected one never ran
        await b.close()

    asyncio.run(main())


def test_a_delay_timeout_moves_a_request_behind_its_level_but_ahead_of_lower_ones(
    executor,
) -> None:
    async def main() -> None:
        clock = FakeClock()
        runtime = FakeRuntime(gated=True)
        queue = setup("priority_levels: 2 default_priority_level: 2 priority_queue_policy { "
                      "key: 1 value { timeout_action: DELAY default_timeout_microseconds: "
                      "1000000 } }")  # fmt: skip
        b = batcher(queue, runtime, executor, clock)
        busy = b.submit(rows(0), 1)
        await started(runtime)
        delayed = b.submit(rows(1), 1, priority=1)
        low = b.submit(rows(2), 1, priority=2)
        clock.advance(0.6)
        fresh = b.submit(rows(3), 1, priority=1)
        clock.advance(0.6)  # the first level-1 request is past its timeout, the second not
        runtime.gate.set()
        assert await order_of([busy, delayed, low, fresh]) == [0, 3, 1, 2]
        await b.close()

    asyncio.run(main())


def test_a_request_timeout_may_shorten_the_default_only_when_override_is_allowed(
    executor,
) -> None:
    async def rejected(allow: bool, timeout_us: int, waited: float) -> bool:
        clock = FakeClock()
        runtime = FakeRuntime(gated=True)
        queue = setup("default_queue_policy { default_timeout_microseconds: 10000000 "
                      f"allow_timeout_override: {str(allow).lower()} }}")  # fmt: skip
        b = batcher(queue, runtime, executor, clock)
        busy = b.submit(rows(0), 1)
        await started(runtime)
        waiting = b.submit(rows(1), 1, timeout_us=timeout_us)
        clock.advance(waited)
        runtime.gate.set()
        await busy
        try:
            await waiting
        except QueueTimeout:
            return True
        finally:
            await b.close()
        return False

    async def main() -> None:
        # 0.1 s of the default 10 s: honoured only with the override allowed.
        assert await rejected(True, 100_000, 1.0)
        assert not await rejected(False, 100_000, 1.0)
        # 60 s cannot lengthen the default 10 s, allowed or not.
        assert await rejected(True, 60_000_000, 20.0)
        assert await rejected(False, 60_000_000, 20.0)
        assert not await rejected(True, 60_000_000, 5.0)

    asyncio.run(main())


def test_without_a_configured_policy_the_request_timeout_rejects(executor) -> None:
    async def main() -> None:
        clock = FakeClock()
        runtime = FakeRuntime(gated=True)
        b = batcher(setup(""), runtime, executor, clock)
        busy = b.submit(rows(0), 1)
        await started(runtime)
        timed = b.submit(rows(1), 1, timeout_us=500_000)
        untimed = b.submit(rows(2), 1)
        clock.advance(10.0)
        runtime.gate.set()
        await busy
        with pytest.raises(QueueTimeout):
            await timed
        assert (await untimed).outputs[0][0, 0] == 4.0
        await b.close()

    asyncio.run(main())


def test_max_queue_size_bounds_each_level_on_its_own(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        queue = setup("priority_levels: 2 default_priority_level: 2 "
                      "default_queue_policy { max_queue_size: 2 } "
                      "priority_queue_policy { key: 1 value { max_queue_size: 1 } }")  # fmt: skip
        b = batcher(queue, runtime, executor)
        busy = b.submit(rows(0), 1)
        await started(runtime)
        accepted = [b.submit(rows(1), 1, priority=1)]
        with pytest.raises(QueueFull, match="priority level 1"):
            b.submit(rows(9), 1, priority=1)
        accepted += [b.submit(rows(2), 1, priority=2), b.submit(rows(3), 1)]
        with pytest.raises(QueueFull, match="priority level 2"):
            b.submit(rows(9), 1, priority=2)
        runtime.gate.set()
        assert await order_of([busy, *accepted]) == [0, 1, 2, 3]
        await b.close()

    asyncio.run(main())


def test_the_server_wide_limit_bounds_the_sum_unless_the_config_sets_its_own() -> None:
    assert setup("priority_levels: 2 default_priority_level: 1", 5).limit == 5
    assert setup("default_queue_policy { max_queue_size: 3 }", 5).limit == 0
    assert setup_of(None, 7) == QueueSetup(limit=7)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("priority_levels: 2 default_priority_level: 0", "must be in 1..priority_levels .2., got"),
        ("priority_levels: 2 default_priority_level: 3", "must be in 1..priority_levels .2., got"),
        (
            "priority_levels: 2 default_priority_level: 1 priority_queue_policy "
            "{ key: 3 value { } }",
            "names level 3",
        ),  # fmt: skip
        ("priority_queue_policy { key: 1 value { } }", "priority_levels is 0"),
    ],
)
def test_configs_triton_refuses_fail_the_load_with_the_reason(text: str, fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment):
        setup(text)
