"""LoopWatchdog on a real event loop: a callback that blocks the loop is
reported once, with where it blocked; an idle or busy-but-yielding loop is
never reported. Assertions are on what is logged, not on how long it took."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from serving.watchdog import LoopWatchdog

LOGGER = "serving.watchdog"


def stall_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and "event loop blocked for" in r.getMessage()
    ]


async def settle(seconds: float) -> None:
    """Keep the loop responsive (many short turns) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await asyncio.sleep(0.005)


def blocking_callback() -> None:
    time.sleep(0.3)  # the stall: nothing else runs on the loop meanwhile


def test_a_blocked_loop_logs_one_warning_naming_where(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), threshold_s=0.1)
        dog.start()
        try:
            await settle(0.1)
            asyncio.get_running_loop().call_soon(blocking_callback)
            await settle(0.3)  # the watchdog's late probe has run and been measured
        finally:
            dog.stop()
        return dog

    dog = asyncio.run(main())
    lines = stall_lines(caplog)
    assert len(lines) == 1, lines
    (line,) = lines
    blocked_ms = int(line.split("event loop blocked for ")[1].split(" ms")[0])
    assert blocked_ms > 100, line  # it did measure the stall, not a probe interval
    assert "blocking_callback" in line, line  # where the loop was when it stalled
    assert dog.stalls == 1
    assert caplog.records[-1].levelno == logging.WARNING


def test_an_idle_loop_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), threshold_s=0.1)
        dog.start()
        try:
            await asyncio.sleep(0.4)  # idle: the loop waits in select()
            await settle(0.2)  # busy, but every turn is short
        finally:
            dog.stop()
        return dog

    dog = asyncio.run(main())
    assert stall_lines(caplog) == []
    assert dog.stalls == 0


def test_warnings_are_rate_limited_and_count_the_stalls_in_between(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    def short_block() -> None:
        time.sleep(0.15)

    async def main() -> LoopWatchdog:
        loop = asyncio.get_running_loop()
        dog = LoopWatchdog(loop, threshold_s=0.05, report_every_s=60.0)
        dog.start()
        try:
            for _ in range(3):
                loop.call_soon(short_block)
                await settle(0.15)
        finally:
            dog.stop()
        return dog

    dog = asyncio.run(main())
    assert len(stall_lines(caplog)) == 1, stall_lines(caplog)
    assert dog.stalls == 3


def test_a_loop_that_is_not_running_is_not_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    """Started before the loop runs and stopped after it ended: no warning
    for the time the loop was not running at all."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    loop = asyncio.new_event_loop()
    try:
        dog = LoopWatchdog(loop, threshold_s=0.05)
        dog.start()
        time.sleep(0.2)  # the loop is not running yet
        loop.run_until_complete(settle(0.2))
        time.sleep(0.2)  # and no longer
        dog.stop()
    finally:
        loop.close()
    assert stall_lines(caplog) == []
    assert dog.stalls == 0


def test_stop_returns_while_the_loop_is_blocked_and_start_stop_are_idempotent() -> None:
    async def main() -> None:
        dog = LoopWatchdog(asyncio.get_running_loop(), threshold_s=0.05)
        dog.start()
        dog.start()
        await settle(0.05)
        time.sleep(0.2)  # the loop is blocked right here, in the loop's own thread
        dog.stop()  # the thread is waiting for a probe that cannot run: stop still returns
        dog.stop()

    asyncio.run(main())


def test_the_threshold_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="threshold"):
            LoopWatchdog(loop, threshold_s=0)
    finally:
        loop.close()


def test_settle_counts_a_stall_that_ended_before_the_caller_got_its_answer() -> None:
    """Another thread waits for a coroutine that blocks the loop; once it
    has the coroutine's answer, settle() makes ``stalls`` include that stall
    (without it the watchdog thread may not have judged its probe yet)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    dog = LoopWatchdog(loop, threshold_s=0.1)
    dog.start()
    try:

        async def blocks() -> str:
            time.sleep(0.3)  # the stall, then the answer
            return "answered"

        assert asyncio.run_coroutine_threadsafe(settle(0.1), loop).result(10) is None
        assert dog.settle(10) and dog.stalls == 0
        assert asyncio.run_coroutine_threadsafe(blocks(), loop).result(10) == "answered"
        assert dog.settle(10)
        assert dog.stalls == 1
    finally:
        dog.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert dog.settle(0.1)  # stopped: nothing in flight to wait for
