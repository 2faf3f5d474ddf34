"""The batcher's clock: ``perf_counter`` and an event wait with a timeout,
behind a protocol so tests drive time by hand (tests/unit/serving/test_batcher.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def cpu(self) -> float:
        """CPU seconds of the calling thread."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        """Return when ``event`` is set or ``timeout`` seconds have passed."""
        ...


class MonotonicClock:
    now = staticmethod(time.perf_counter)
    cpu = staticmethod(time.thread_time)

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
