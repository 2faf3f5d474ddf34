"""DynamicBatcher through its public interface, with a fake runtime and an
injected clock: no sleeps, no timing assumptions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import numpy as np
import pytest

from serving.batcher import DynamicBatcher
from serving.errors import InferenceFailed, QueueFull, QueueTimeout, ShuttingDown


class FakeClock:
    """Time moves only when the test calls ``advance``."""

    def __init__(self) -> None:
        self.t = 100.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self.t + timeout, timer))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([waiter, timer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for due, timer in self._timers:
            if due <= self.t and not timer.done():
                timer.set_result(None)
        self._timers = [(d, f) for d, f in self._timers if not f.done()]


class FakeRuntime:
    """Doubles ``x`` and returns the batch each row ran in; can be gated so a
    batch blocks until the test releases it, and can fail on a poison value."""

    def __init__(self, gated: bool = False, poison: float | None = None) -> None:
        self.batches: list[int] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Event()
        self.poison = poison

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]
        self.batches.append(x.shape[0])
        self.started.set()
        assert self.gate.wait(10), "test forgot to release the gate"
        if self.poison is not None and np.any(x == self.poison):
            raise InferenceFailed("poisoned batch")
        return [x * 2, np.full((x.shape[0], 1), len(self.batches), dtype=np.int64)]


@pytest.fixture
def executor():
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


def rows(value: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), value, dtype=np.float32)}


async def until(predicate, steps: int = 1000) -> None:  # type: ignore[no-untyped-def]
    """Let the loop run until ``predicate()`` (the batcher is async)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def started(runtime: FakeRuntime) -> None:
    await asyncio.get_running_loop().run_in_executor(None, runtime.started.wait, 10)


def test_each_request_gets_its_own_rows_back_under_concurrency(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=16, workers=2, executor=executor)
        sizes = [1 + (i % 4) for i in range(60)]
        futures = [b.submit(rows(float(i), n), n) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*futures)
        for i, (n, result) in enumerate(zip(sizes, results, strict=True)):
            assert result.outputs[0].shape == (n, 3)
            np.testing.assert_array_equal(result.outputs[0], np.full((n, 3), 2.0 * i))
            assert result.batch_rows >= n
        assert sum(runtime.batches) == sum(sizes)
        assert max(runtime.batches) <= 16
        await b.close()

    asyncio.run(main())


def test_queued_requests_become_one_batch_never_over_max_and_never_split(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(runtime.run, max_batch_size=8, workers=1, executor=executor)
        first = b.submit(rows(0), 1)
        await started(runtime)  # the worker is busy with the first request
        queued = [b.submit(rows(float(i), 3), 3) for i in range(1, 5)]  # 12 rows waiting
        runtime.gate.set()
        results = await asyncio.gather(first, *queued)
        # 1 alone, then 3+3 (a third 3 would make 9 > 8), then 3+3.
        assert runtime.batches == [1, 6, 6]
        assert [r.batch_rows for r in results] == [1, 6, 6, 6, 6]
        for i, r in enumerate(results[1:], start=1):
            np.testing.assert_array_equal(r.outputs[0], np.full((3, 3), 2.0 * i))
        batch_ids = [int(r.outputs[1][0, 0]) for r in results]
        assert batch_ids == [1, 2, 2, 3, 3]
        await b.close()

    asyncio.run(main())


def test_zero_delay_runs_a_lone_request_at_once() -> None:
    async def main() -> None:
        clock = FakeClock()
        runtime = FakeRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=8, clock=clock)  # inline, no delay
        result = await b.submit(rows(1), 1)  # no clock advance needed
        assert runtime.batches == [1]
        assert result.queue_seconds == 0
        await b.close()

    asyncio.run(main())


def test_queue_delay_waits_for_the_preferred_size_or_the_oldest_request_age() -> None:
    async def main() -> None:
        clock = FakeClock()
        runtime = FakeRuntime()
        b = DynamicBatcher(
            runtime.run, max_batch_size=8, max_queue_delay=0.010,
            preferred_batch_sizes=[4], clock=clock,
        )  # fmt: skip
        first = b.submit(rows(1), 1)
        await until(lambda: clock._timers)  # the worker waits for company
        clock.advance(0.004)
        await asyncio.sleep(0)
        assert runtime.batches == []
        second = b.submit(rows(2), 1)
        await asyncio.sleep(0)
        assert runtime.batches == []
        clock.advance(0.006)  # the oldest request has now waited 10 ms
        r1, r2 = await asyncio.gather(first, second)
        assert runtime.batches == [2]
        assert r1.queue_seconds == pytest.approx(0.010)
        assert r2.queue_seconds == pytest.approx(0.006)

        # Reaching the preferred size dispatches without waiting for the clock.
        futures = [b.submit(rows(i), 1) for i in range(4)]
        await asyncio.gather(*futures)
        assert runtime.batches == [2, 4]
        await b.close()

    asyncio.run(main())


def test_an_error_fails_only_the_requests_of_its_batch(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True, poison=-1.0)
        b = DynamicBatcher(runtime.run, max_batch_size=2, workers=1, executor=executor)
        r1 = b.submit(rows(1), 1)
        await started(runtime)
        r2 = b.submit(rows(-1), 1)  # poison: its batch fails
        r3 = b.submit(rows(3), 1)  # same batch as r2 (max 2 rows)
        r4 = b.submit(rows(4), 1)  # next batch
        runtime.gate.set()
        results = await asyncio.gather(r1, r2, r3, r4, return_exceptions=True)
        assert runtime.batches == [1, 2, 1]
        assert isinstance(results[1], InferenceFailed)
        assert isinstance(results[2], InferenceFailed)
        assert "poisoned" in results[1].message
        np.testing.assert_array_equal(results[0].outputs[0], np.full((1, 3), 2.0))
        np.testing.assert_array_equal(results[3].outputs[0], np.full((1, 3), 8.0))
        # The batcher keeps serving after a failed batch.
        ok = await b.submit(rows(5), 1)
        np.testing.assert_array_equal(ok.outputs[0], np.full((1, 3), 10.0))
        await b.close()

    asyncio.run(main())


def test_a_runtime_bug_becomes_inference_failed_for_that_batch_only() -> None:
    async def main() -> None:
        calls = []

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            calls.append(1)
            if len(calls) == 1:
                raise ZeroDivisionError("bug")
            return [feeds["x"]]

        b = DynamicBatcher(run, max_batch_size=4)
        with pytest.raises(InferenceFailed):
            await b.submit(rows(1), 1)
        assert (await b.submit(rows(2), 1)).outputs[0][0, 0] == 2
        await b.close()

    asyncio.run(main())


def test_wrong_output_rows_fail_the_batch_clearly() -> None:
    async def main() -> None:
        b = DynamicBatcher(lambda feeds: [np.zeros((1, 2))], max_batch_size=4)
        with pytest.raises(InferenceFailed, match="shape"):
            await b.submit(rows(1, 3), 3)
        await b.close()

    asyncio.run(main())


def test_without_batching_every_request_runs_alone(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(
            runtime.run, max_batch_size=8, batching=False, workers=1, executor=executor
        )
        first = b.submit(rows(0, 2), 2)
        await started(runtime)
        rest = [b.submit(rows(float(i), 2), 2) for i in range(1, 4)]
        runtime.gate.set()
        await asyncio.gather(first, *rest)
        assert runtime.batches == [2, 2, 2, 2]
        await b.close()

    asyncio.run(main())


def test_a_full_queue_refuses_at_once(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(
            runtime.run, max_batch_size=1, max_queue_size=2, workers=1, executor=executor,
            name="m:1",
        )  # fmt: skip
        running = b.submit(rows(0), 1)
        await started(runtime)
        waiting = [b.submit(rows(1), 1), b.submit(rows(2), 1)]
        with pytest.raises(QueueFull, match="m:1"):
            b.submit(rows(3), 1)
        runtime.gate.set()
        await asyncio.gather(running, *waiting)
        assert runtime.batches == [1, 1, 1]
        await b.close()

    asyncio.run(main())


def test_an_expired_request_is_dropped_before_compute(executor) -> None:
    async def main() -> None:
        clock = FakeClock()
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(runtime.run, max_batch_size=4, workers=1, executor=executor,
                           clock=clock)  # fmt: skip
        running = b.submit(rows(0), 1)
        await started(runtime)
        late = b.submit(rows(1), 1, deadline=clock.now() + 0.5)
        fine = b.submit(rows(2), 1, deadline=clock.now() + 5.0)
        clock.advance(1.0)
        runtime.gate.set()
        await running
        with pytest.raises(QueueTimeout):
            await late
        result = await fine
        assert result.outputs[0][0, 0] == 4.0
        assert runtime.batches == [1, 1]  # the expired row never reached the runtime
        await b.close()

    asyncio.run(main())


def test_cancelled_requests_are_skipped(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(runtime.run, max_batch_size=8, workers=1, executor=executor)
        running = b.submit(rows(0), 1)
        await started(runtime)
        gone = b.submit(rows(1), 1)
        kept = b.submit(rows(2), 1)
        gone.cancel()
        runtime.gate.set()
        await running
        assert (await kept).outputs[0][0, 0] == 4.0
        assert runtime.batches == [1, 1]
        await b.close()

    asyncio.run(main())


def test_close_drains_queued_work_then_refuses(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(runtime.run, max_batch_size=1, workers=1, executor=executor)
        futures = [b.submit(rows(float(i)), 1) for i in range(3)]
        await started(runtime)
        closing = asyncio.ensure_future(b.close(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            b.submit(rows(9), 1)
        runtime.gate.set()
        results = await asyncio.gather(*futures)
        await closing
        assert [r.outputs[0][0, 0] for r in results] == [0.0, 2.0, 4.0]

    asyncio.run(main())


def test_on_batch_reports_rows_and_compute_time() -> None:
    async def main() -> None:
        seen: list[tuple[int, float]] = []
        b = DynamicBatcher(
            lambda feeds: [feeds["x"]], max_batch_size=8,
            on_batch=lambda n, secs: seen.append((n, secs)),
        )  # fmt: skip
        await b.submit(rows(1, 3), 3)
        assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] >= 0
        await b.close()

    asyncio.run(main())


def test_fast_batches_run_on_the_event_loop_and_slow_ones_in_the_pool(executor) -> None:
    async def main() -> None:
        clock = FakeClock()
        loop_thread = threading.get_ident()
        for cost, expected in ((0.0, [False, True, True, True]), (0.001, [False] * 4)):
            on_loop: list[bool] = []

            def run(
                feeds: dict[str, np.ndarray], cost: float = cost, on_loop: list[bool] = on_loop
            ) -> list[np.ndarray]:
                on_loop.append(threading.get_ident() == loop_thread)
                clock.t += cost  # simulated compute time on the injected clock
                return [feeds["x"]]

            b = DynamicBatcher(run, max_batch_size=4, executor=executor, clock=clock,
                               inline_below=100e-6)  # fmt: skip
            for i in range(4):
                await b.submit(rows(i), 1)
            assert on_loop == expected, cost
            await b.close()

    asyncio.run(main())


def test_an_idle_batcher_runs_a_fast_request_within_submit(executor) -> None:
    async def main() -> None:
        clock = FakeClock()  # compute time 0: a "fast" model
        runtime = FakeRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=8, executor=executor, clock=clock)
        await b.submit(rows(1), 1)  # the first batch measures the model, in the pool
        direct = b.submit(rows(2), 1)
        assert direct.done()  # answered without a worker turn
        np.testing.assert_array_equal(direct.result().outputs[0], np.full((1, 3), 4.0))
        assert direct.result().queue_seconds == 0
        await b.close()

        # With a queue delay the batcher must wait for company: never direct.
        delayed = DynamicBatcher(runtime.run, max_batch_size=8, executor=executor, clock=clock,
                                 max_queue_delay=0.5)  # fmt: skip
        await delayed.submit(rows(1, 8), 8)  # a full batch does not wait
        pending = delayed.submit(rows(3), 1)
        assert not pending.done()
        await until(lambda: clock._timers)
        clock.advance(0.5)
        assert (await pending).outputs[0][0, 0] == 6.0
        await delayed.close()

    asyncio.run(main())


def test_batcher_close_without_drain_answers_the_running_batch() -> None:
    """The request whose batch is inside the runtime when close(drain=False)
    comes gets UNAVAILABLE, and a later close returns."""
    started, release = threading.Event(), threading.Event()

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        started.set()
        release.wait(30)
        return [feeds["input"]]

    async def scenario() -> tuple[BaseException | None, bool]:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, max_batch_size=4, executor=pool, name="m:1")
            running = batcher.submit({"input": np.zeros((1, 2), np.float32)}, 1)
            while not started.is_set():  # the worker takes it into the runtime
                await asyncio.sleep(0.01)
            await batcher.close(drain=False)
            try:
                await asyncio.wait_for(asyncio.shield(running), 2)
                error: BaseException | None = None
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                error = exc
            try:
                await asyncio.wait_for(batcher.close(drain=True), 2)
                closes_again = True
            except TimeoutError:
                closes_again = False
            release.set()
            return error, closes_again

    error, closes_again = asyncio.run(scenario())
    assert isinstance(error, ShuttingDown), repr(error)
    assert closes_again
