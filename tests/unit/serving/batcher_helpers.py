"""A fake clock and runtime that drive ``DynamicBatcher`` deterministically
(tests/unit/serving/test_batcher.py, test_queues.py)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from serving.errors import InferenceFailed


class FakeClock:
    """Time moves only when the test calls ``advance``."""

    def __init__(self) -> None:
        self.t = 100.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    def cpu(self) -> float:  # a simulated run's compute is all CPU
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
