"""Stopping a child process the way a server expects: SIGTERM (its graceful
drain), a bounded wait, then SIGKILL. Used by ``dlserve tune`` for its
candidate servers, and by scripts, benchmarks and tests for theirs."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any], timeout: float) -> int:
    """Stop ``proc`` if it still runs: SIGTERM, up to ``timeout`` seconds for
    it to exit, then SIGKILL. Returns its exit code (negative: the signal
    that ended it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
