"""Run a real dlserve server inside the test process, on free ports.

with InProcessServer(repo) as server:
    client = tritonclient.grpc.InferenceServerClient(server.url)

The same ``serving.app.App`` the CLI builds (settings parsed from the same
``dlserve serve`` flags), on a uvloop event loop of its own in a background
thread: gRPC and metrics on port 0 (the ports the OS picked, from
``App.start()``), REST on a free port. The properties match
``devtools.serverproc.ServerProcess`` (url, http_url, metrics_url, log(),
stop() -> 0, loop_stalls()), so a test does not care which one it got; keep
``ServerProcess`` for what needs a process of its own: the CLI, signals,
``--workers``, shutdown, startup errors, the process's stderr or memory.

The event-loop watchdog runs at LOOP_WATCHDOG_MS as in ServerProcess; unless
``allow_loop_stalls=True``, a stall fails the test phase during which it
happened (tests/conftest.py, counting the watchdog's ``stalls`` after its
``settle()``), and stop() fails on any stall no phase reported.

log() holds the records of the ``serving`` loggers from start() to stop().
Two in-process servers running at the same time share those loggers, so each
one's log() also holds the other's lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

from devtools.ports import free_port
from devtools.serverproc import LOOP_STALL_MARK, LOOP_WATCHDOG_MS, LoopbackServer, ServerFailed

#: The loggers whose records log() returns.
SERVER_LOGGER = "serving"
#: How long stall_count() waits for the watchdog's probe in flight (only a
#: loop blocked right now makes it wait this long).
SETTLE_TIMEOUT_S = 5.0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        #: (the logging thread's ident, the formatted line)
        self.lines: list[tuple[int, str]] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._guard:
            self.lines.append((record.thread or 0, line))

    def text(self) -> str:
        with self._guard:
            return "".join(line + "\n" for _, line in self.lines)

    def from_thread(self, ident: int) -> list[str]:
        with self._guard:
            return [line for thread, line in self.lines if thread == ident]


def settings_for(repository: Path, args: Sequence[str]) -> tuple[Any, list[str]]:
    """ServingSettings and the --load-model names from ``dlserve serve``
    flags, parsed as the CLI parses them."""
    from dlserve.argparsing import OneLineParser
    from serving import cli

    parser = OneLineParser(prog="dlserve")
    cli.register(parser.add_subparsers(dest="command", parser_class=OneLineParser))
    parsed = parser.parse_args(["serve", "--model-repository", str(repository), *args])
    return cli._settings(parsed), list(parsed.load_model or [])


class InProcessServer(LoopbackServer):
    def __init__(
        self,
        repository: Path | str,
        *args: str,
        ready_timeout: float = 60.0,
        tls_ca: bytes | None = None,
        allow_loop_stalls: bool = False,
    ) -> None:
        self.repository = Path(repository)
        self.args = list(args)
        self.tls_ca = tls_ca
        self.ready_timeout = ready_timeout
        self.allow_loop_stalls = allow_loop_stalls
        self.grpc_port = 0
        self.metrics_port = 0
        self.http_port = 0
        self._records = _Records()
        self._saved_level = logging.NOTSET
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._app: Any = None
        self._watchdog_ident: int | None = None
        self._exit: concurrent.futures.Future[None] = concurrent.futures.Future()

    @property
    def app(self) -> Any:
        """The running ``serving.app.App`` (its service, manager, metrics)."""
        return self._app

    def _flags(self) -> list[str]:
        given = set(self.args)
        flags = ["--host", "127.0.0.1"] if "--host" not in given else []
        flags += ["--grpc-port", "0"] if "--grpc-port" not in given else []
        flags += ["--metrics-port", "0"] if "--metrics-port" not in given else []
        flags += ["--http-port", str(free_port())] if "--http-port" not in given else []
        return [*flags, *self.args]

    def start(self) -> "InProcessServer":
        from serving.app import App

        settings, load_models = settings_for(self.repository, self._flags())
        if settings.loop_watchdog_ms == 0:
            settings = settings.model_copy(update={"loop_watchdog_ms": float(LOOP_WATCHDOG_MS)})
        self._attach_log(settings.log_level)
        started: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run,
            args=(functools.partial(self._main, App, settings, load_models, started), started),
            name="inprocess-server",
            daemon=True,
        )
        self._thread.start()
        try:
            running = started.result(self.ready_timeout)
        except concurrent.futures.TimeoutError:
            raise ServerFailed(
                f"server not serving after {self.ready_timeout}s:\n{self.log()}"
            ) from None
        except Exception as exc:
            self._thread.join(30)
            self._detach_log()
            raise ServerFailed(f"server failed to start: {exc}\n{self.log()}") from exc
        # The watchdog thread's ident, kept: the watchdog forgets its thread at stop.
        thread = getattr(self._app._watchdog, "_thread", None)
        self._watchdog_ident = thread.ident if thread is not None else None
        self.grpc_port = running.grpc_port
        self.metrics_port = running.metrics_port
        self.http_port = running.http_port
        self.watch_stalls()
        return self

    def _run(
        self,
        main: Callable[[], Coroutine[Any, Any, None]],
        started: concurrent.futures.Future[Any],
    ) -> None:
        """The thread's body: ``main()`` on a uvloop loop of its own; a failure
        before ``main`` reported the start goes to ``started``."""
        import uvloop

        loop = uvloop.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
            self._exit.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            if not started.done():
                started.set_exception(exc)
            self._exit.set_exception(exc)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(
        self,
        app_class: Any,
        settings: Any,
        load_models: list[str],
        started: concurrent.futures.Future[Any],
    ) -> None:
        self._app = app = app_class(settings, load_models)
        try:
            running = await app.start()
        except BaseException:
            app.executor.shutdown(wait=False, cancel_futures=True)
            if app._watchdog is not None:
                app._watchdog.stop()
            raise
        started.set_result(running)
        await app.wait()
        await app.stop()

    def log(self) -> str:
        return self._records.text()

    def _attach_log(self, level: str) -> None:
        logger = logging.getLogger(SERVER_LOGGER)
        self._saved_level = logger.level
        wanted = logging.getLevelName(level.upper())
        if logger.level == logging.NOTSET or logger.level > wanted:
            logger.setLevel(wanted)
        logger.addHandler(self._records)

    def _detach_log(self) -> None:
        logger = logging.getLogger(SERVER_LOGGER)
        logger.removeHandler(self._records)
        logger.setLevel(self._saved_level)

    def stop(self, timeout: float = 60.0) -> int:
        """Drain and stop as on SIGTERM; 0 once stopped (raises otherwise)."""
        if self._thread is None:
            return 0
        if self._thread.is_alive() and self._loop is not None and self._app is not None:
            self._loop.call_soon_threadsafe(self._app.request_stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ServerFailed(f"server did not stop within {timeout}s:\n{self.log()}")
        self._thread = None
        self._detach_log()
        try:
            self._exit.result(0)
        finally:
            self.check_loop_stalls()
        return 0

    def loop_stalls(self) -> list[str]:
        """This server's watchdog's "event loop blocked for ..." lines so far
        (the handler sees every ``serving`` logger in the test process: other
        watchdogs, e.g. the unit tests', log from threads of their own)."""
        if self._watchdog_ident is None:
            return []
        lines = self._records.from_thread(self._watchdog_ident)
        return [line for line in lines if LOOP_STALL_MARK in line]

    def stall_count(self) -> int:
        """The watchdog's count of stalls (every one, logged or not), once the
        probe in flight has been judged: a stall the loop went through before
        its last answer to the test is in it."""
        dog = getattr(self._app, "_watchdog", None)
        if dog is None:
            return len(self.loop_stalls())
        dog.settle(SETTLE_TIMEOUT_S)
        return max(int(dog.stalls), len(self.loop_stalls()))

    def watchdog_name(self) -> str:
        return f"the in-process server's watchdog at {LOOP_WATCHDOG_MS} ms"

    def __enter__(self) -> "InProcessServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__: Sequence[str] = ("InProcessServer", "settings_for")
