"""devtools.inprocess.InProcessServer itself: a stall of its own loop fails
the test at stop, and another watchdog's lines in the same process do not."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from devtools.serverproc import wait_for
from serving.watchdog import LoopWatchdog


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "m", model=mlp(seed=1))
    return tmp_path


def test_a_stall_of_its_loop_fails_at_stop(repo: Path) -> None:
    server = InProcessServer(repo).start()
    assert server._loop is not None
    server._loop.call_soon_threadsafe(time.sleep, 0.4)  # blocks the server's loop
    assert wait_for(lambda: server.loop_stalls(), 10), server.log()
    with pytest.raises(AssertionError, match="event loop was blocked 1 time"):
        server.stop()


def test_another_watchdogs_stall_is_not_counted(repo: Path) -> None:
    with InProcessServer(repo) as server:
        loop = asyncio.new_event_loop()
        other = LoopWatchdog(loop, 0.05)
        other.start()
        loop.call_soon(time.sleep, 0.3)
        loop.run_until_complete(asyncio.sleep(0.5))
        other.stop()
        loop.close()
        assert "event loop blocked" in server.log()  # seen by the handler...
        assert server.loop_stalls() == []  # ...but not this server's stall
