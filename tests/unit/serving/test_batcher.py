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
from tests.unit.serving.batcher_helpers import FakeClock, FakeRuntime, rows, started, until


@pytest.fixture
def executor():
    pool = concurrent.futures.ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=True)


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


def test_a_failure_on_the_direct_path_fails_that_request_only(executor) -> None:
    """An idle batcher of a fast model runs a request within submit: a
    ServingError from the run, or any other exception (logged), is that
    request's answer, and the next request runs direct again."""

    async def main() -> None:
        failing: list[str] = []

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            if failing == ["serving"]:
                raise InferenceFailed("poisoned batch")
            if failing == ["bug"]:
                raise ZeroDivisionError("bug")
            return [feeds["x"] * 2]

        b = DynamicBatcher(run, max_batch_size=8, executor=executor, clock=FakeClock())
        await b.submit(rows(1), 1)  # the first batch measures the model, in the pool
        for kind, message in (("serving", "poisoned batch"), ("bug", "ZeroDivisionError")):
            failing[:] = [kind]
            failed = b.submit(rows(2), 1)
            assert failed.done()  # it ran within submit
            error = failed.exception()
            assert isinstance(error, InferenceFailed) and message in error.message, error
            failing.clear()
            ok = b.submit(rows(3), 1)
            assert ok.done() and ok.result().outputs[0][0, 0] == 6.0
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


# --- batch safety: what may share a batch, and workers that cannot die ----------


class WidthRuntime:
    """A model over ``x`` of any width and an optional ``bias`` input: each
    row's answer is its sum plus its bias (``DEFAULT_BIAS`` when the batch has
    none). Gated like FakeRuntime; records each batch's input shapes."""

    DEFAULT_BIAS = 100.0

    def __init__(self) -> None:
        self.batches: list[dict[str, tuple[int, ...]]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append({name: a.shape for name, a in sorted(feeds.items())})
        self.started.set()
        assert self.gate.wait(10), "test forgot to release the gate"
        x = feeds["x"]
        bias = feeds.get("bias", np.full((x.shape[0], 1), self.DEFAULT_BIAS, x.dtype))
        return [x.sum(axis=1, keepdims=True) + bias]


def wide(value: float, width: int, n: int = 1, bias: float | None = None) -> dict[str, np.ndarray]:
    feeds = {"x": np.full((n, width), value, dtype=np.float32)}
    if bias is not None:
        feeds["bias"] = np.full((n, 1), bias, dtype=np.float32)
    return feeds


def answer(feeds: dict[str, np.ndarray]) -> np.ndarray:
    x = feeds["x"]
    bias = feeds.get("bias", np.full((x.shape[0], 1), WidthRuntime.DEFAULT_BIAS, x.dtype))
    return x.sum(axis=1, keepdims=True) + bias


async def answered(futures, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Every future's outcome; a request left unanswered fails the test
    (instead of hanging it) - what a dead worker looks like."""
    _, pending = await asyncio.wait(futures, timeout=timeout)
    if pending:
        raise AssertionError(f"{len(pending)} of {len(futures)} requests never answered")
    return [f.exception() or f.result() for f in futures]


def test_requests_whose_non_batch_dims_differ_never_share_a_batch(executor) -> None:
    """Config dims [-1]: two valid requests of widths 2 and 3 cannot be
    concatenated. The first that does not fit closes the batch being formed
    (order kept); every request gets its own right answer."""

    async def main() -> None:
        runtime = WidthRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=16, workers=1, executor=executor)
        first = b.submit(wide(0, 4), 1)
        await started(runtime)  # the only worker is busy: the rest queue up
        feeds = [wide(1, 2), wide(2, 2, n=2), wide(3, 3), wide(4, 3), wide(5, 2), wide(6, 5)]
        futures = [b.submit(f, f["x"].shape[0]) for f in feeds]
        runtime.gate.set()
        results = await answered([first, *futures])
        for f, result in zip([wide(0, 4), *feeds], results, strict=True):
            assert not isinstance(result, BaseException), repr(result)
            np.testing.assert_array_equal(result.outputs[0], answer(f))
        assert [s["x"] for s in runtime.batches] == [(1, 4), (3, 2), (2, 3), (1, 2), (1, 5)]
        # The worker is alive and batches again.
        more = [b.submit(wide(7, 2), 1), b.submit(wide(8, 2), 1)]
        for f, result in zip([wide(7, 2), wide(8, 2)], await answered(more), strict=True):
            np.testing.assert_array_equal(result.outputs[0], answer(f))
        await b.close()

    asyncio.run(main())


def test_an_optional_input_sent_by_one_and_omitted_by_another_never_share_a_batch(
    executor,
) -> None:
    async def main() -> None:
        runtime = WidthRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=16, workers=1, executor=executor)
        first = b.submit(wide(0, 2), 1)
        await started(runtime)
        feeds = [
            wide(1, 2, bias=1.0), wide(2, 2, bias=2.0),  # with bias: one batch
            wide(3, 2), wide(4, 2, n=3),  # without: the next
            wide(5, 2, bias=5.0),  # with again: a third
        ]  # fmt: skip
        futures = [b.submit(f, f["x"].shape[0]) for f in feeds]
        runtime.gate.set()
        results = await answered([first, *futures])
        for f, result in zip([wide(0, 2), *feeds], results, strict=True):
            assert not isinstance(result, BaseException), repr(result)
            np.testing.assert_array_equal(result.outputs[0], answer(f))
        assert runtime.batches == [
            {"x": (1, 2)},
            {"bias": (2, 1), "x": (2, 2)},
            {"x": (4, 2)},
            {"bias": (1, 1), "x": (1, 2)},
        ]
        await b.close()

    asyncio.run(main())


def test_inputs_of_another_dtype_never_share_a_batch(executor) -> None:
    async def main() -> None:
        runtime = WidthRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=16, workers=1, executor=executor)
        first = b.submit(wide(0, 2), 1)
        await started(runtime)
        as64 = {"x": np.full((1, 2), 2.0, dtype=np.float64)}
        futures = [b.submit(wide(1, 2), 1), b.submit(as64, 1), b.submit(wide(3, 2), 1)]
        runtime.gate.set()
        results = await answered([first, *futures])
        assert all(not isinstance(r, BaseException) for r in results), results
        assert results[2].outputs[0].dtype == np.float64
        assert len(runtime.batches) == 4
        await b.close()

    asyncio.run(main())


class Explosive(np.ndarray):
    """An array that numpy refuses to concatenate: what a bug (or a memory
    error) in building a batch looks like to the worker."""

    def __array_function__(self, func, types, args, kwargs):  # type: ignore[no-untyped-def]
        if func is np.concatenate:
            raise RuntimeError("cannot build this batch")
        return super().__array_function__(func, types, args, kwargs)


def test_a_worker_survives_a_failure_while_building_a_batch(
    executor, caplog: pytest.LogCaptureFixture
) -> None:
    """Anything raised while a batch is formed answers that batch's requests
    with InferenceFailed (INTERNAL), is logged once, and the one worker goes
    on serving."""

    async def main() -> None:
        runtime = WidthRuntime()
        b = DynamicBatcher(runtime.run, max_batch_size=16, workers=1, executor=executor, name="m:1")
        first = b.submit(wide(0, 2), 1)
        await started(runtime)
        bad = [b.submit({"x": np.zeros((1, 2), np.float32).view(Explosive)}, 1) for _ in range(2)]
        runtime.gate.set()
        results = await answered([first, *bad])
        np.testing.assert_array_equal(results[0].outputs[0], answer(wide(0, 2)))
        for r in results[1:]:
            assert isinstance(r, InferenceFailed), repr(r)
            assert "RuntimeError" in r.message
        ok = await answered([b.submit(wide(9, 2), 1)])
        np.testing.assert_array_equal(ok[0].outputs[0], answer(wide(9, 2)))
        await b.close()

    with caplog.at_level("ERROR", logger="serving.batcher"):
        asyncio.run(main())
    errors = [r for r in caplog.records if r.name == "serving.batcher" and r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "m:1" in errors[0].getMessage()


def test_a_worker_survives_a_runtime_exception_that_is_not_a_serving_error(executor) -> None:
    """A bare exception from ``run`` in the pool (not a ServingError) fails
    its batch only; the single worker answers the next request."""

    async def main() -> None:
        calls: list[int] = []

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            calls.append(feeds["x"].shape[0])
            if len(calls) == 1:
                raise KeyError("bug in the runtime")
            return [feeds["x"] * 2]

        b = DynamicBatcher(run, max_batch_size=4, workers=1, executor=executor, inline_below=0)
        failed, ok = await answered([b.submit(rows(1), 1)]), None
        assert isinstance(failed[0], InferenceFailed), repr(failed[0])
        (ok,) = await answered([b.submit(rows(2), 1)])
        np.testing.assert_array_equal(ok.outputs[0], np.full((1, 3), 4.0))
        await b.close()

    asyncio.run(main())


def test_the_queue_is_bounded_in_bytes(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        one = rows(0)["x"].nbytes  # 12 bytes a row
        b = DynamicBatcher(
            runtime.run, max_batch_size=8, workers=1, executor=executor,
            max_queue_bytes=3 * one, name="m:1",
        )  # fmt: skip
        running = b.submit(rows(0), 1)  # taken by the worker: not queued
        await started(runtime)
        waiting = [b.submit(rows(1), 1), b.submit(rows(2, 2), 2)]  # 3 rows' bytes queued
        assert b.queued_bytes == 3 * one
        with pytest.raises(QueueFull, match="limit") as info:
            b.submit(rows(3), 1)
        assert "m:1" in info.value.message and "bytes" in info.value.message
        runtime.gate.set()
        await answered([running, *waiting])
        assert b.queued_bytes == 0
        # An empty queue always admits one request, even one over the bound.
        big = await answered([b.submit(rows(4, 8), 8)])
        assert big[0].outputs[0].shape == (8, 3)
        await b.close()

    asyncio.run(main())


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the callbacks scheduled on the loop: each task wake-up is one."""

    def __init__(self) -> None:
        super().__init__()
        self.callbacks = 0

    def call_soon(self, callback, *args, context=None):  # type: ignore[no-untyped-def, override]
        self.callbacks += 1
        return super().call_soon(callback, *args, context=context)


def test_an_arrival_wakes_one_idle_worker_not_all() -> None:
    """64 idle workers, no queue delay: each arrival costs a handful of loop
    callbacks (one worker woken), not one per worker, and N arrivals make at
    most N runs."""
    workers = 64

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        runs: list[int] = []

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            runs.append(feeds["x"].shape[0])
            return [feeds["x"] * 2]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            b = DynamicBatcher(
                run, max_batch_size=8, workers=workers, executor=pool, inline_below=0
            )  # inline_below=0: every request goes through the queue and a worker
            for _ in range(5):
                await asyncio.sleep(0)  # every worker is asleep
            per_arrival = []
            for i in range(10):
                loop.callbacks = 0
                result = await b.submit(rows(float(i)), 1)
                for _ in range(3):
                    await asyncio.sleep(0)  # anything else woken has run by now
                per_arrival.append(loop.callbacks)
                np.testing.assert_array_equal(result.outputs[0], np.full((1, 3), 2.0 * i))
            assert max(per_arrival) < workers // 4, per_arrival
            assert len(runs) == 10

            # A burst of N concurrent arrivals: at most N runs, all answered.
            runs.clear()
            burst = [b.submit(rows(float(i)), 1) for i in range(20)]
            results = await answered(burst)
            assert len(runs) <= 20 and sum(runs) == 20
            for i, r in enumerate(results):
                np.testing.assert_array_equal(r.outputs[0], np.full((1, 3), 2.0 * i))
            await b.close()

    loop = CountingLoop()
    try:
        loop.run_until_complete(main())
    finally:  # as asyncio.run does: nothing left pending when the loop closes
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.wait(leftover) if leftover else asyncio.sleep(0))
        loop.close()


def test_worker_count_is_clamped(caplog: pytest.LogCaptureFixture) -> None:
    import serving.batcher as batcher_module

    limit = batcher_module.MAX_WORKERS

    async def main() -> int:
        b = DynamicBatcher(lambda feeds: [feeds["x"]], max_batch_size=4, workers=limit * 40,
                           name="huge:1")  # fmt: skip
        count = b.worker_count
        assert (await b.submit(rows(1), 1)).outputs[0][0, 0] == 1
        await b.close()
        return count

    with caplog.at_level("WARNING", logger="serving.batcher"):
        assert asyncio.run(main()) == limit
    assert any("huge:1" in r.getMessage() for r in caplog.records)


def test_the_byte_bound_counts_what_bytes_tensors_hold(executor) -> None:
    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        b = DynamicBatcher(
            runtime.run, max_batch_size=8, workers=1, executor=executor, max_queue_bytes=4096
        )
        running = b.submit(rows(0), 1)
        await started(runtime)
        b.submit(rows(1), 1)  # something queued: the bound applies to the next one
        strings = {"x": np.array([[b"s" * 100_000] * 3], dtype=object)}  # 300 kB of strings
        try:
            with pytest.raises(QueueFull):
                b.submit(strings, 1)
        finally:
            runtime.gate.set()
            await running
            await b.close(drain=False)

    asyncio.run(main())


def test_the_byte_bound_counts_what_the_caller_keeps_for_a_request(executor) -> None:
    """Probe finding F5: a request with a tiny tensor and a 4 MiB id kept
    the id while it waited, and only its tensor counted. ``held`` bytes (its
    id) count against the bound with its tensors, and leave with it."""

    async def main() -> None:
        runtime = FakeRuntime(gated=True)
        one = rows(0)["x"].nbytes
        b = DynamicBatcher(
            runtime.run, max_batch_size=8, workers=1, executor=executor, max_queue_bytes=4096
        )
        running = b.submit(rows(0), 1, held=10_000)  # taken by the worker: not queued
        await started(runtime)
        queued = b.submit(rows(1), 1, held=3000)
        assert b.queued_bytes == one + 3000
        with pytest.raises(QueueFull, match="bytes"):
            b.submit(rows(2), 1, held=3000)  # its tensor alone would fit
        small = b.submit(rows(3), 1, held=100)
        assert b.queued_bytes == 2 * one + 3100
        runtime.gate.set()
        await answered([running, queued, small])
        assert b.queued_bytes == 0
        await b.close()

    asyncio.run(main())
