"""Dynamic batching: concurrent requests to one model version become one
onnxruntime run, and the result is split back along the rows.

Policy (Triton's, minus its fixed wait): a worker that is free takes every
queued request at once, up to ``max_batch_size`` rows, and never splits a
request. With ``max_queue_delay`` = 0 (the default) nothing ever waits for
company: at low load each request runs alone at once, under load the queue
that builds while a batch computes is the next batch. With a delay > 0 a
free worker waits for the preferred (or maximum) batch size, at most until
the oldest request has waited ``max_queue_delay``.

Without batching (``batching=False``) each request runs on its own, through
the same bounded queue, deadlines and workers.

A batch only joins requests that can be concatenated: the same inputs
present, and the same non-batch dims for each (a config dim of -1 lets two
valid requests differ there, an ``optional`` input may be sent by one and
omitted by another). As in Triton, the first request that does not fit the
batch being formed closes it and heads the next one, so order is kept.

The queue is bounded in requests (``max_queue_size``) and in bytes
(``max_queue_bytes``, the tensors a queued request holds and what its caller
keeps for it, its id). An arrival wakes
one idle worker, never all of them; a worker task cannot die: whatever goes
wrong in a batch answers that batch's requests and is logged once.

Where a batch runs: onnxruntime releases the GIL, so slow batches go to the
thread pool and the event loop keeps serving meanwhile. The hop costs ~25 µs
of CPU per batch (measured: 33 vs 7 µs per batch-1 run of the circle MLP),
more than such a model's whole compute, so batches whose running average
compute time is under ``inline_below`` seconds run on the event loop thread.
When such a model's batcher is idle (nothing queued or running, no queue
delay), a request runs at once in its caller's turn of the loop: no worker
wake-up, which is most of the batcher's cost at low load. Requests wait in
a ``queues.PriorityQueue`` (Triton's priority levels and queue policies).
The clock is injectable, so tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import logging
from typing import Any, Callable, NoReturn, Sequence

import numpy as np

from serving.batch_jobs import BatchResult, Job, fits
from serving.clock import Clock, MonotonicClock, timed_in_pool, timed_inline
from serving.errors import InferenceFailed, QueueFull, QueueTimeout, ServingError, ShuttingDown
from serving.queues import PriorityQueue, QueueSetup

logger = logging.getLogger(__name__)

RunFn = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
#: A batch's run, timed (``clock.timed_inline``/``timed_in_pool``), or its
#: failure re-raised: outputs, compute seconds, CPU seconds.
Produce = Callable[[Any], tuple[list[np.ndarray], float, float]]


#: More worker tasks than this per batcher are never started (instance_group
#: counts above it are clamped with a warning): each is a task, and the
#: thread pool bounds real parallelism long before.
MAX_WORKERS = 256


class DynamicBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int,
        batching: bool = True,
        max_queue_delay: float = 0.0,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_size: int = 0,
        queue: QueueSetup | None = None,
        max_queue_bytes: int = 0,
        workers: int = 1,
        executor: concurrent.futures.Executor | None = None,
        clock: Clock | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        inline_below: float = 100e-6,
        compute_estimate: float = float("inf"),
        name: str = "",
    ) -> None:
        """``run`` executes one batch (in ``executor``'s threads, or inline on
        the event loop when it is None) and returns every output with the
        batch's rows first. ``on_batch(rows, compute_seconds)`` is called per
        executed batch. ``queue``: priority levels and policies (default: one
        level of ``max_queue_size``). ``compute_estimate``: a batch's CPU seconds
        as measured at warm-up (inf: unknown), the first guess of where it runs."""
        self._clock: Clock = clock or MonotonicClock()
        self._pool_run = functools.partial(timed_in_pool, self._clock, run)
        self._inline_run = functools.partial(timed_inline, self._clock, run)
        self._max_rows = max(1, max_batch_size)
        self._batching = batching and max_batch_size > 0
        self._delay = max_queue_delay if self._batching else 0.0
        preferred = sorted(p for p in preferred_batch_sizes if 0 < p <= self._max_rows)
        self._target = preferred[-1] if preferred else self._max_rows
        self._max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._executor = executor
        self._on_batch = on_batch
        self._inline_below = inline_below
        self._compute_avg = compute_estimate  # a batch's CPU seconds, running average
        self._name = name
        self._queue = PriorityQueue(queue or QueueSetup(limit=max_queue_size))
        self._queued_rows = 0
        #: Set on arrival for a worker that waits for company (queue delay).
        self._arrival = asyncio.Event()
        #: One future per idle worker; an arrival wakes exactly one.
        self._sleepers: collections.deque[asyncio.Future[None]] = collections.deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0
        self._closing = False
        count = max(1, workers)
        if count > MAX_WORKERS:
            logger.warning(
                "model '%s': %d workers asked for (instance_group count); using %d, the limit",
                name, count, MAX_WORKERS,
            )  # fmt: skip
            count = MAX_WORKERS
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(count)]

    # -- public --------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting for a worker."""
        return len(self._queue)

    @property
    def name(self) -> str:
        """model:version, for logs."""
        return self._name

    @property
    def queued_bytes(self) -> int:
        """Bytes the queued requests hold: tensor data and their ``held`` bytes."""
        return self._queued_bytes

    def depths(self) -> list[int]:
        """Requests waiting at each priority level, level 1 first."""
        return self._queue.depths()

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    def submit(
        self,
        feeds: dict[str, np.ndarray],
        rows: int,
        deadline: float | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        held: int = 0,
    ) -> asyncio.Future[BatchResult]:
        """Queue one validated request of ``rows`` rows, dropped unrun after
        ``deadline`` (batcher clock); its level's policy applies ``priority``
        and ``timeout_us``, the request's parameters. ``held``: bytes the
        caller keeps for the request while it waits besides its tensors (its
        id), counted against ``max_queue_bytes`` with them."""
        if self._closing:
            raise ShuttingDown(f"model '{self._name}' is shutting down; retry on another replica")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        if (
            self._busy == 0
            and not self._queue
            and self._delay == 0
            and self._compute_avg < self._inline_below
        ):
            # The direct path: an idle batcher of a fast model runs the request
            # now, in the caller's turn of the event loop (nothing else runs
            # meanwhile), so admission (levels, timeouts, the byte bound) has
            # nothing to refuse or to schedule, and no worker wakes up.
            try:
                outputs, compute = self._produce(rows, self._inline_run, feeds)
            except ServingError as exc:
                future.set_exception(exc)
            else:
                future.set_result(BatchResult(outputs, 0.0, compute, rows))
            return future
        now = self._clock.now()
        level, deadline, delay_at = self._queue.admit(priority, timeout_us, now, deadline,
                                                      self._name)  # fmt: skip
        nbytes = held
        for array in feeds.values():
            # An object array (BYTES) holds references: count what they hold.
            nbytes += array.nbytes if array.dtype != object else sum(map(len, array.flat))
        if (
            self._max_queue_bytes
            and self._queue
            and self._queued_bytes + nbytes > self._max_queue_bytes
        ):
            raise QueueFull(
                f"model '{self._name}' has {self._queued_bytes} bytes of requests queued; "
                f"this one ({nbytes} bytes) would pass its limit of {self._max_queue_bytes}; "
                "retry later or add replicas"
            )
        job = Job(feeds, rows, future, now, deadline, nbytes, level, delay_at)
        self._queue.append(job)
        self._queued_rows += rows
        self._queued_bytes += nbytes
        self._idle.clear()
        self._arrival.set()
        sleepers = self._sleepers
        while sleepers:
            sleeper = sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                break
        return future

    async def close(self, drain: bool = True) -> None:
        """Refuse new work; with ``drain``, finish what is queued first."""
        self._closing = True
        if drain:
            await self._idle.wait()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        # A cancelled task keeps its CancelledError, whose traceback holds the
        # worker's frame and so this batcher and its runtime: drop them, so a
        # retired session is freed at once, not at the next cyclic GC.
        self._workers = []
        self._sleepers.clear()
        while self._queue:
            job = self._queue.pop()
            if not job.future.done():
                job.future.set_exception(ShuttingDown(f"model '{self._name}' was unloaded"))
        self._queued_rows = 0
        self._queued_bytes = 0
        self._idle.set()  # nothing runs any more: a later close returns at once

    # -- worker --------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._busy == 0:
                    self._idle.set()
                sleeper: asyncio.Future[None] = loop.create_future()
                self._sleepers.append(sleeper)
                try:
                    await sleeper
                finally:
                    if not sleeper.done():
                        sleeper.cancel()
                continue
            if self._delay > 0 and self._queued_rows < self._target:
                await self._wait_for_company()
                if not self._queue:
                    continue
            jobs = self._take()
            if not jobs:
                continue
            self._busy += 1
            try:
                await self._execute(jobs)
            except asyncio.CancelledError:
                # close(drain=False) while this batch ran: answer its requests.
                self._fail(jobs, ShuttingDown(f"model '{self._name}' was unloaded"))
                raise
            except Exception as exc:  # a bug here must not kill the worker
                logger.error("batch of %d requests on model '%s' failed", len(jobs), self._name,
                             exc_info=exc)  # fmt: skip
                self._fail(jobs, InferenceFailed(f"inference failed: {type(exc).__name__}"))
            finally:
                self._busy -= 1

    async def _wait_for_company(self) -> None:
        oldest = self._queue.head().enqueued
        while self._queue and self._queued_rows < self._target:
            remaining = oldest + self._delay - self._clock.now()
            if remaining <= 0:
                return
            self._arrival.clear()
            await self._clock.wait(self._arrival, remaining)

    def _take(self) -> list[Job]:
        jobs: list[Job] = []
        rows = 0
        now = self._clock.now()
        queue = self._queue
        queue.expire(now)
        while queue:
            job = queue.head()
            late = job.deadline is not None and now > job.deadline
            if (
                not job.future.done()
                and not late
                and jobs
                and (
                    rows + job.rows > self._max_rows
                    or not self._batching
                    or not fits(jobs[0].feeds, job.feeds)
                )
            ):
                break  # the next batch starts with it
            queue.pop()
            self._queued_rows -= job.rows
            self._queued_bytes -= job.nbytes
            if job.future.done():  # cancelled by its caller
                continue
            if late:
                job.future.set_exception(QueueTimeout(
                    f"request to model '{self._name}' waited past its deadline in the "
                    "queue and was not run"
                ))  # fmt: skip
                continue
            jobs.append(job)
            rows += job.rows
            if not self._batching:
                break
        return jobs

    async def _execute(self, jobs: list[Job]) -> None:
        if len(jobs) == 1:
            feeds = jobs[0].feeds
        else:  # _take joined only requests that fit together
            feeds = {
                name: np.concatenate([job.feeds[name] for job in jobs]) for name in jobs[0].feeds
            }
        started = self._clock.now()
        if self._executor is None or self._compute_avg < self._inline_below:
            self._complete(jobs, started, self._inline_run, feeds)
            return
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._pool_run, feeds)
        except Exception as exc:
            self._complete(jobs, started, _reraise, exc)
            return
        self._complete(jobs, started, lambda r: r, result)

    def _complete(self, jobs: list[Job], started: float, produce: Produce, arg: Any) -> None:
        """Get the batch's outputs from ``produce(arg)`` and answer its jobs;
        any failure fails exactly these jobs."""
        rows = jobs[0].rows if len(jobs) == 1 else sum([job.rows for job in jobs])
        try:
            outputs, compute = self._produce(rows, produce, arg)
        except ServingError as exc:
            self._fail(jobs, exc)
            return
        if len(jobs) == 1:
            job = jobs[0]
            if not job.future.done():
                job.future.set_result(BatchResult(outputs, started - job.enqueued, compute, rows))
            return
        offset = 0
        for job in jobs:
            end = offset + job.rows
            if not job.future.done():
                rows_of = [out[offset:end] for out in outputs]
                queued = started - job.enqueued
                job.future.set_result(BatchResult(rows_of, queued, compute, rows, outputs))
            offset = end

    def _produce(self, rows: int, produce: Produce, arg: Any) -> tuple[list[np.ndarray], float]:
        """A batch of ``rows`` rows' outputs from ``produce(arg)``, checked, and
        its compute seconds, counted (running average, ``on_batch``). Raises
        ServingError; any other failure is logged and becomes one."""
        try:
            outputs, compute, cpu = produce(arg)
            for out in outputs:
                if out.ndim == 0 or (self._batching and out.shape[0] != rows):
                    raise InferenceFailed(
                        f"model '{self._name}' returned an output of shape {list(out.shape)} "
                        f"for a batch of {rows} rows"
                    )
        except ServingError:
            raise
        except Exception as exc:  # a runtime bug must fail this batch only
            logger.error("batch of %d rows on model '%s' failed", rows, self._name, exc_info=exc)
            raise InferenceFailed(f"inference failed: {type(exc).__name__}") from None
        avg = self._compute_avg
        self._compute_avg = cpu if avg == float("inf") else avg + 0.2 * (cpu - avg)
        if self._on_batch is not None:
            self._on_batch(rows, compute)
        return outputs, compute

    @staticmethod
    def _fail(jobs: list[Job], exc: ServingError) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)


def _reraise(exc: BaseException) -> NoReturn:
    raise exc
