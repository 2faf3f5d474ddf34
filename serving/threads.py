"""Blocking work the event loop must not wait on (model loads, repository
scans), each in a daemon thread of its own."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


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
            loop.call_soon_threadsafe(settle, fn(*args), None)
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, exc)

    threading.Thread(target=run, name="model-load", daemon=True).start()
    return future
