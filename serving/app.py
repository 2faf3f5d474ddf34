"""The composition root: settings -> metrics, executor, loader, manager,
service, and the transports over it (REST, gRPC, the metrics HTTP endpoint);
start, serve until a signal, drain, stop. The CLI, ``--workers``,
``benchmarks/inprocess.py`` and the in-process test server all build the
process through ``App``; nothing else constructs a ``ModelManager``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import signal
import time
from dataclasses import dataclass
from typing import Callable

from serving import trace_settings
from serving.credentials import CredentialError, load_credentials
from serving.errors import ServingError
from serving.grpc_api.server import GrpcFrontend
from serving.http_api.server import HttpFrontend
from serving.http_server import MetricsHttpServer
from serving.loader import RuntimeFactory, VersionLoader, onnx_runtime
from serving.log_settings import LogSettings
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.metrics_app import make_app
from serving.response_cache import CacheCollector, ResponseCache
from serving.runtime import both_onnxruntimes_installed
from serving.service import EXTENSIONS, SHM_EXTENSIONS, InferenceService
from serving.settings import ServingSettings
from serving.shm import SharedMemoryRegistry
from serving.tracing import Tracing
from serving.watchdog import LoopWatchdog

logger = logging.getLogger(__name__)

#: While draining, the listener closes after this long without a refused request...
LINGER_QUIET_SECS = 0.5
#: ...or after this long at most.
LINGER_MAX_SECS = 2.0
#: Time left to send the answers of drained requests when the exit timeout is spent.
SEND_GRACE_SECS = 0.5


class StartupError(Exception):
    """The server cannot start (bad repository, port in use, bad TLS files)."""


@dataclass
class RunningServer:
    grpc_port: int
    metrics_port: int
    #: 0 when REST is off (--http-port 0).
    http_port: int = 0


class App:
    def __init__(
        self,
        settings: ServingSettings,
        load_models: list[str] | None = None,
        *,
        worker: bool = False,
        runtime_factory: RuntimeFactory = onnx_runtime,
    ) -> None:
        """``worker``: one of ``--workers N`` processes sharing the gRPC port
        (SO_REUSEPORT); the supervisor serves the metrics HTTP endpoint."""
        self.settings = settings
        self.load_models = load_models or []
        self.worker = worker
        self.metrics = Metrics(enabled=settings.metrics_enabled, lockless=not worker)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            settings.inference_threads, thread_name_prefix="onnxruntime"
        )
        loader = VersionLoader(settings, self.metrics, self.executor, runtime_factory)
        self.manager = ModelManager(settings, loader, self.metrics)
        self.cache = ResponseCache(settings.cache_bytes) if settings.cache_bytes else None
        if self.cache is not None:
            self.manager.on_retire = self.cache.forget
            if settings.metrics_enabled:
                self.metrics.registry.register(CacheCollector(self.cache))
        shm = settings.allow_client_shm
        tracing = Tracing(trace_settings.parse(settings.trace_config),
                          self.manager.known_versions, self.metrics.registry)  # fmt: skip
        self.service = InferenceService(
            self.manager, self.metrics, EXTENSIONS + SHM_EXTENSIONS if shm else EXTENSIONS,
            max_response_bytes=settings.max_message_bytes, cache=self.cache,
            shm=SharedMemoryRegistry(shm), tracing=tracing,
            logs=LogSettings(settings.log_level, settings.log_format),
        )  # fmt: skip
        self.grpc: GrpcFrontend | None = None
        self.rest: HttpFrontend | None = None
        self._http: MetricsHttpServer | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._watchdog: LoopWatchdog | None = None

    async def start(self) -> RunningServer:
        s = self.settings
        if s.loop_watchdog_ms > 0:
            self._watchdog = LoopWatchdog(asyncio.get_running_loop(), s.loop_watchdog_ms / 1000)
            self._watchdog.start()
        try:
            credentials = load_credentials(s)
        except CredentialError as exc:
            raise StartupError(str(exc)) from exc
        if both_onnxruntimes_installed():
            logger.error(
                "both onnxruntime and onnxruntime-gpu are installed; they provide the same "
                "module and break each other: pip uninstall one of them"
            )
        try:
            await self.manager.start(self.load_models)
        except ServingError as exc:
            raise StartupError(exc.message) from exc
        self.grpc = GrpcFrontend(s, self.service, token=credentials.token, tls=credentials.tls,
                                 reuse_port=self.worker)  # fmt: skip
        if s.http_port:
            self.rest = HttpFrontend(s, self.service, token=credentials.token,
                                     reuse_port=self.worker)  # fmt: skip
        http_port = 0
        try:
            if self.rest is not None:
                http_port = self.rest.bind()
            port = self.grpc.bind()
            if not self.worker:
                self._http = MetricsHttpServer(
                    make_app(self.metrics.registry), s.host, s.metrics_port
                )
        except OSError as exc:
            where = "gRPC" if self._http is None and not self.worker else "metrics"
            raise StartupError(
                str(exc)
                if where == "gRPC" or not exc.strerror
                else f"cannot listen for metrics on {s.host}:{s.metrics_port}: {exc.strerror}"
            ) from exc
        await self.grpc.start()
        if self.rest is not None:
            await self.rest.start()
        if self._http is not None:
            self._http.start()
        self.service.ready = True
        ready = sorted(self.manager.table.names())
        failed = self.manager.not_ready()
        metrics_port = self._http.port if self._http is not None else s.metrics_port
        logger.info(
            "dlserve %s %d model(s) %s on %sgrpc %s, metrics http://%s:%d/metrics%s",
            "worker serving" if self.worker else "serving", len(ready), ready,
            f"http {s.host}:{http_port}, " if http_port else "", f"{s.host}:{port}", s.host,
            metrics_port, f"; NOT ready: {failed}" if failed else "",
        )  # fmt: skip
        return RunningServer(port, metrics_port, http_port)

    def request_stop(self) -> None:
        """First call (SIGTERM/SIGINT): drain and stop. A second one while
        draining: stop now, cancelling what is still running."""
        if self._stop.is_set():
            logger.warning("second stop signal: cancelling the requests still in flight")
            self._force.set()
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Drain within exit_timeout_secs: new requests get UNAVAILABLE, the
        queued and running ones finish and are answered, then the listener
        closes and everything is released."""
        loop = asyncio.get_running_loop()
        timeout = self.settings.exit_timeout_secs
        deadline = loop.time() + timeout
        logger.info("draining (up to %.0f s)", timeout)
        self.service.ready = False
        if self.grpc is not None:
            await self.grpc.enter_drain()
        if self.rest is not None:
            self.rest.enter_drain()
        drain = asyncio.ensure_future(self.manager.drain(timeout))
        force = asyncio.ensure_future(self._force.wait())
        await asyncio.wait((drain, force), return_when=asyncio.FIRST_COMPLETED)
        if drain.done() and not drain.result():
            logger.warning("exit timeout: requests still queued were refused")
        force.cancel()
        await self._linger(deadline)
        if self.grpc is not None:
            # The answers of drained requests go out (a moment is left for
            # them even when the timeout is spent); streams get what is left
            # of the timeout to finish. Anything after that is cancelled.
            left = max(SEND_GRACE_SECS, deadline - loop.time())
            grace = 0.0 if self._force.is_set() else left
            await asyncio.gather(
                self.grpc.stop(grace), *([self.rest.stop(grace)] if self.rest else [])
            )
        if not drain.done():
            drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await self.manager.stop()
        self.service.shm.close()
        await self.service.tracing.shutdown()
        if self._http is not None:
            self._http.stop()
        # A batch already inside onnxruntime cannot be interrupted: wait for it.
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._watchdog is not None:
            self._watchdog.stop()
        logger.info("stopped")

    async def _linger(self, deadline: float) -> None:
        """Keep the listener open while clients are still being refused.

        grpc answers a call that reached the server but no handler yet with
        CANCELLED when the server stops (grpc/grpc#41785), which clients do not
        retry. So the requests already on their way get our clean UNAVAILABLE
        instead: the listener closes once no request was refused for
        LINGER_QUIET_SECS (at most LINGER_MAX_SECS, and never past the exit
        timeout)."""
        loop = asyncio.get_running_loop()
        end = min(deadline, loop.time() + LINGER_MAX_SECS)
        table = self.manager.table
        while not self._force.is_set():
            quiet = time.monotonic() - table.last_refusal
            left = end - loop.time()
            if quiet >= LINGER_QUIET_SECS or left <= 0:
                return
            await asyncio.sleep(min(LINGER_QUIET_SECS - quiet, left))


async def serve(
    settings: ServingSettings,
    load_models: list[str] | None = None,
    *,
    worker: bool = False,
    on_started: Callable[[RunningServer], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain and return 0."""
    # What is imported by now lives as long as the process: out of the cyclic
    # GC with it, whose every full collection held the GIL, and so the event
    # loop, for 14-28 ms, against 0.3-0.7 ms frozen (`python -m
    # benchmarks.gc_pause`, models/). Models load after this, so a retired
    # one is still collected.
    gc.collect()
    gc.freeze()
    app = App(settings, load_models, worker=worker)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    try:
        running = await app.start()
    except BaseException:
        app.executor.shutdown(wait=False, cancel_futures=True)
        raise
    if on_started is not None:
        on_started(running)
    await app.wait()
    await app.stop()
    # The drain is over and the process exits with 0: a stop signal that
    # arrives from now on (an orchestrator repeating SIGTERM) must not turn
    # that into death by signal once the loop closes and asyncio restores
    # the default handlers.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    return 0
