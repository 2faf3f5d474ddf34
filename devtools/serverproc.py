"""Start a real ``dlserve serve`` process on 127.0.0.1 for tests.

with ServerProcess(repo) as server:
    client = tritonclient.grpc.InferenceServerClient(server.url)

Every server runs with the event-loop watchdog on (SERVING_LOOP_WATCHDOG_MS,
LOOP_WATCHDOG_MS unless the caller's env sets it; a server that does not know
the setting ignores the variable). Unless it was created with
``allow_loop_stalls=True`` (a test that blocks the loop on purpose), a running
server is watched: after each test phase (setup, call, teardown)
tests/conftest.py asks ``watched_stalls()`` and fails that phase if the log
gained "event loop blocked for" lines, and stop() fails on any stall that no
phase reported. The log is read when the phase ends: a line the server writes
a moment later goes to the next phase, usually the same test's teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.ports import free_port

#: The watchdog threshold test servers run with (SERVING_LOOP_WATCHDOG_MS).
LOOP_WATCHDOG_MS = 100
#: What serving.watchdog logs when the event loop could not run for too long.
LOOP_STALL_MARK = "event loop blocked for"


class ServerFailed(RuntimeError):
    pass


#: Running servers whose loop stalls fail the test (weak: a server a test
#: dropped without stopping stops being watched).
_WATCHED: "weakref.WeakSet[LoopbackServer]" = weakref.WeakSet()


def watched_stalls() -> str:
    """The stalls of running, watched servers that no one reported yet (marked
    reported now), as one message; "" when there are none."""
    return "\n".join(found for server in list(_WATCHED) if (found := server.new_stalls()))


class LoopbackServer:
    """The addresses of a test server on 127.0.0.1 (subprocess or in-process),
    and the bookkeeping of its event-loop stalls."""

    grpc_port: int
    http_port: int
    metrics_port: int
    allow_loop_stalls: bool = False
    #: stalls and "event loop blocked" lines already reported
    _stalls_reported = 0
    _lines_reported = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def loop_stalls(self) -> list[str]:
        """The watchdog's "event loop blocked for ..." lines so far."""
        raise NotImplementedError

    def stall_count(self) -> int:
        """Stalls so far (a line may stand for several: the watchdog logs at
        most one line per 5 s and sums up the rest in its next line)."""
        return len(self.loop_stalls())

    def new_stalls(self) -> str:
        """The stalls not reported yet, as a message (and now reported); ""
        when there are none."""
        count, lines = self.stall_count(), self.loop_stalls()
        new, self._stalls_reported = count - self._stalls_reported, count
        shown, self._lines_reported = lines[self._lines_reported :], len(lines)
        return stall_message(new, shown, self.watchdog_name()) if new > 0 else ""

    def watchdog_name(self) -> str:
        return f"the watchdog at {LOOP_WATCHDOG_MS} ms"

    def watch_stalls(self) -> None:
        """Have tests/conftest.py fail the test phase in which the loop stalls."""
        self._stalls_reported = self._lines_reported = 0
        if not self.allow_loop_stalls:
            _WATCHED.add(self)

    def check_loop_stalls(self) -> None:
        """At stop: stop watching, and fail on stalls no test phase reported
        (unless allowed)."""
        _WATCHED.discard(self)
        if self.allow_loop_stalls:
            return
        found = self.new_stalls()
        if found:
            raise AssertionError(found)


class ServerProcess(LoopbackServer):
    def __init__(
        self,
        repository: Path | str,
        *args: str,
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
        wait_ready: bool = True,
        tls_ca: bytes | None = None,
        allow_loop_stalls: bool = False,
    ) -> None:
        self.repository = Path(repository)
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.http_port = free_port()
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.setdefault("SERVING_LOOP_WATCHDOG_MS", str(LOOP_WATCHDOG_MS))
        self.allow_loop_stalls = allow_loop_stalls
        self._stall_lines: list[str] = []
        self._log_read = 0  # bytes of the log scanned for stall lines
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.tls_ca = tls_ca
        self.proc: subprocess.Popen[str] | None = None
        self.log_path: Path | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "dlserve", "serve",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1",
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            *self.args,
        ]  # fmt: skip

    def start(self) -> "ServerProcess":
        import tempfile

        fd, name = tempfile.mkstemp(prefix="dlserve-test-", suffix=".log")
        self.log_path = Path(name)
        self._log = os.fdopen(fd, "w")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        self._stall_lines, self._log_read = [], 0
        self.watch_stalls()
        if self.wait_ready:
            self.wait_until_serving()
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def _channel(self) -> grpc.Channel:
        if self.tls_ca is not None:
            return grpc.secure_channel(self.url, grpc.ssl_channel_credentials(self.tls_ca))
        return grpc.insecure_channel(self.url)

    def wait_until_serving(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self._channel() as ch:
                    reply = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1.0
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        self.kill()
        raise ServerFailed(f"server not serving after {self.ready_timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerFailed(
                    f"server did not stop within {timeout}s:\n{self.log()}"
                ) from None
        self._log.close()
        self.check_loop_stalls()
        return int(self.proc.returncode)

    def loop_stalls(self) -> list[str]:
        """The watchdog's "event loop blocked for ..." lines in the log so far
        (the log is read from where the last call stopped, whole lines only)."""
        if self.log_path is None:
            return []
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_read)
                data = f.read()
        except FileNotFoundError:  # removed by __exit__
            return list(self._stall_lines)
        whole = data[: data.rfind(b"\n") + 1]
        self._log_read += len(whole)
        text = whole.decode(errors="replace")
        self._stall_lines += [line for line in text.splitlines() if LOOP_STALL_MARK in line]
        return list(self._stall_lines)

    def watchdog_name(self) -> str:
        return f"SERVING_LOOP_WATCHDOG_MS={self.env.get('SERVING_LOOP_WATCHDOG_MS')}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
            if self.log_path is not None:
                self.log_path.unlink(missing_ok=True)


def stall_message(count: int, lines: list[str], watchdog: str) -> str:
    """What a test (or a server's stop) fails with when the loop stalled."""
    shown = "\n".join(lines[:20]) or (
        "(no line yet: the watchdog logs at most one line per 5 s and sums up the rest "
        "in its next line)"
    )
    return (
        f"the server's event loop was blocked {count} time(s) ({watchdog}); "
        f"pass allow_loop_stalls=True if the test does it on purpose:\n{shown}"
    )


def run_cli(
    *args: str, timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``dlserve ARGS`` (as ``python -m dlserve``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "dlserve", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


__all__: Sequence[str] = (
    "LOOP_STALL_MARK", "LOOP_WATCHDOG_MS", "ServerProcess", "ServerFailed", "run_cli", "wait_for",
    "watched_stalls",
)  # fmt: skip
