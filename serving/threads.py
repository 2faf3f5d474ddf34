"""Blocking work the event loop must not wait on (model loads, repository
scans), each in a daemon thread of its own; and the process's exit past
such a thread still running (``exit_code``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

#: in_thread's threads still running.
_running: set[threading.Thread] = set()


def in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in a daemon thread of its own. Loads and scans are rare
    and may block (a large model, a stalled mount); unlike an executor's
    threads, this one never holds up the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        # No local keeps the result: once handed over, this thread holds no
        # reference to it (a retired model must not outlive its load thread).
        try:
            try:
                loop.call_soon_threadsafe(settle, fn(*args), None)
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(settle, None, exc)
        except RuntimeError:  # the loop closed meanwhile (the server stopped): nobody waits
            pass
        finally:
            _running.discard(thread)

    thread = threading.Thread(target=run, name="model-load", daemon=True)
    _running.add(thread)
    thread.start()
    return future


def exit_code(code: int) -> int:
    """``code``, for the process to exit with once the server has stopped.
    When a load the drain did not wait for still runs (onnxruntime building
    a session or running warm-up in native code), a normal exit would tear
    onnxruntime's globals down under that thread and abort the process
    (SIGABRT instead of 0): then flush the logs and leave at once."""
    if not any(t.is_alive() for t in list(_running)):
        return code
    logging.getLogger(__name__).info("exiting without waiting for a model load in progress")
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
