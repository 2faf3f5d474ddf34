"""Event-loop stall detection: a daemon thread that notices when the event
loop could not run a callback for longer than a threshold.

Every ``interval_s`` (~20 ms) the thread schedules a no-op on the loop with
``call_soon_threadsafe`` and measures how long the loop took to run it. A
loop that runs callbacks promptly answers within a few hundred microseconds;
one that is stuck in a blocking call (file I/O, a long computation, a lock)
answers late. A probe later than ``threshold_s`` is a stall: it logs one
warning on logger ``serving.watchdog``::

    event loop blocked for 312 ms, over the 100 ms threshold (at serving/x.py:88 in f <- ...)

The location is where the loop's thread was when the threshold passed (the
innermost frames of its stack), which is usually the culprit.

Time the loop's thread spent runnable but waiting for a CPU (an oversubscribed
host: the thread's run-queue wait from Linux's /proc/self/task/<tid>/schedstat)
is not the loop's fault and is not counted; elsewhere every late probe counts.
Warnings are
rate-limited to one per ``report_every_s``; the stalls in between are counted
and summed up in the next line. The thread only reads: it never touches the
loop's state beyond scheduling its no-op, and a loop that is not running
(before start, during shutdown) is never reported as stalled.

``settle()`` waits until the probe in flight, if any, has been judged, so a
caller that just saw the loop answer (a test at its end) reads a ``stalls``
count that includes any stall the loop went through before that answer.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import FrameType

logger = logging.getLogger(__name__)

#: Frames of the loop thread's stack named in a warning, innermost first.
STACK_FRAMES = 4


class LoopWatchdog:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold_s: float,
        *,
        interval_s: float = 0.02,
        report_every_s: float = 5.0,
    ) -> None:
        if threshold_s <= 0:
            raise ValueError(f"threshold_s must be positive, got {threshold_s}")
        self._loop = loop
        self._threshold = threshold_s
        self._interval = interval_s
        self._report_every = report_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_thread: int | None = None
        self._loop_native: int | None = None
        self._last_report = -float("inf")
        self._suppressed = 0
        self._suppressed_max = 0.0
        #: stalls seen (reported or not) and the longest, in seconds
        self.stalls = 0
        self.longest_s = 0.0
        #: probes sent and probes judged (stall or not), guarded by _judged
        self._sent = 0
        self._done = 0
        self._judged = threading.Condition()

    def start(self) -> None:
        """Start watching (a second call does nothing)."""
        if self._thread is not None:
            return
        self._stop.clear()
        try:
            if asyncio.get_running_loop() is self._loop:
                self._loop_thread = threading.get_ident()
                self._loop_native = threading.get_native_id()
        except RuntimeError:  # started from another thread: the first probe tells
            pass
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and wait for the thread (safe from the loop's thread)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(max(1.0, 2 * self._interval))

    def settle(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s``) until the probe in flight now, if any,
        has been judged and counted in ``stalls``; False on time-out (the
        loop is still blocked, or the watchdog stopped mid-probe)."""
        with self._judged:
            target = self._sent
            return self._judged.wait_for(
                lambda: self._done >= target or self._thread is None, timeout_s
            )

    # -- the thread ----------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            if not self._loop.is_running():  # not started yet, or stopping
                self._stop.wait(self._interval)
                continue
            probe = _Probe()
            ran = probe.ran
            queued_before = _runqueue_wait(self._loop_native)
            sent = time.monotonic()
            with self._judged:
                self._sent += 1
            try:
                self._loop.call_soon_threadsafe(probe)
            except RuntimeError:  # the loop is closed
                self._judge_done()
                return
            where, running = "", True
            if not ran.wait(self._threshold):
                where = self._where()
                while not ran.wait(self._interval):
                    if self._stop.is_set():
                        self._judge_done()
                        return
                    if not self._loop.is_running():
                        running = False  # stopped, not blocked
            blocked = probe.at - sent
            if running and blocked > self._threshold:
                queued_after = _runqueue_wait(self._loop_native)
                no_cpu = 0.0
                if queued_before is not None and queued_after is not None:
                    no_cpu = min(blocked, queued_after - queued_before)
                if blocked - no_cpu > self._threshold:
                    self._stalled(blocked - no_cpu, no_cpu, where)
            self._judge_done()
            if probe.thread is not None:
                self._loop_thread, self._loop_native = probe.thread, probe.native
            self._stop.wait(self._interval)

    def _judge_done(self) -> None:
        with self._judged:
            self._done = self._sent
            self._judged.notify_all()

    def _where(self) -> str:
        """The innermost frames of the loop thread's stack, right now."""
        ident = self._loop_thread
        frame: FrameType | None = sys._current_frames().get(ident) if ident else None
        parts: list[str] = []
        while frame is not None and len(parts) < STACK_FRAMES:
            code = frame.f_code
            parts.append(f"{_short(code.co_filename)}:{frame.f_lineno} in {code.co_name}")
            frame = frame.f_back
        return " <- ".join(parts)

    def _stalled(self, blocked: float, no_cpu: float, where: str) -> None:
        self.stalls += 1
        self.longest_s = max(self.longest_s, blocked)
        now = time.monotonic()
        if now - self._last_report < self._report_every:
            self._suppressed += 1
            self._suppressed_max = max(self._suppressed_max, blocked)
            return
        self._last_report = now
        extra = f" (at {where})" if where else ""
        if no_cpu >= 0.001:
            extra += f"; besides {no_cpu * 1000:.0f} ms waiting for a CPU"
        if self._suppressed:
            extra += (
                f"; {self._suppressed} more stall(s) since the last warning, the longest "
                f"{self._suppressed_max * 1000:.0f} ms"
            )
            self._suppressed, self._suppressed_max = 0, 0.0
        logger.warning(
            "event loop blocked for %.0f ms, over the %.0f ms threshold%s",
            blocked * 1000, self._threshold * 1000, extra,
        )  # fmt: skip


class _Probe:
    """The no-op the loop runs: it notes when and on which thread."""

    __slots__ = ("ran", "at", "thread", "native")

    def __init__(self) -> None:
        self.ran = threading.Event()
        self.at = 0.0
        self.thread: int | None = None
        self.native: int | None = None

    def __call__(self) -> None:
        self.at = time.monotonic()
        self.thread = threading.get_ident()
        self.native = threading.get_native_id()
        self.ran.set()


def _runqueue_wait(native_id: int | None) -> float | None:
    """Seconds a thread has spent runnable but not running, so far (Linux
    schedstat's second field); None where the kernel does not say."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _short(path: str) -> str:
    """A file path from its package folder on (site-packages/... is noise)."""
    for marker in ("/site-packages/", "/serving/", "/dlserve/"):
        at = path.rfind(marker)
        if at >= 0:
            return path[at + 1 :] if marker != "/site-packages/" else path[at + len(marker) :]
    return path
