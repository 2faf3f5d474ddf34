"""Assembles and runs the server: model manager, gRPC (KServe V2, health,
reflection), metrics HTTP, signals, graceful drain."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving._generated import POOL
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from serving.errors import ServingError
from serving.grpc_api.auth import BearerTokenInterceptor
from serving.grpc_api.servicer import (
    RAW_REQUEST_METHODS,
    SERVICE_NAME,
    InferenceServicer,
    undecodable_message,
)
from serving.http_server import MetricsHttpServer, make_app
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.runtime import both_onnxruntimes_installed
from serving.service import InferenceService
from serving.settings import ServingSettings

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


def _read(path: object, what: str) -> bytes:
    try:
        with open(str(path), "rb") as f:
            return f.read()
    except OSError as exc:
        raise StartupError(f"cannot read {what} {path}: {exc.strerror}") from exc


class Server:
    def __init__(
        self,
        settings: ServingSettings,
        load_models: list[str] | None = None,
        *,
        worker: bool = False,
    ) -> None:
        """``worker``: one of ``--workers N`` processes sharing the gRPC port
        (SO_REUSEPORT); the supervisor serves the metrics HTTP endpoint."""
        self.settings = settings
        self.load_models = load_models or []
        self.worker = worker
        self.metrics = Metrics(enabled=settings.metrics_enabled)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            settings.inference_threads, thread_name_prefix="onnxruntime"
        )
        self.manager = ModelManager(settings, self.metrics, self.executor)
        self.service = InferenceService(
            self.manager, self.metrics, max_response_bytes=settings.max_message_bytes
        )
        self.servicer = InferenceServicer(
            self.service, self.manager, stream_window=settings.stream_window,
            stream_window_bytes=settings.stream_window_bytes,
        )  # fmt: skip
        self.health = health.aio.HealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self._http: MetricsHttpServer | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()

    async def start(self) -> RunningServer:
        s = self.settings
        token = None
        if s.auth_token_file is not None:
            token = _read(s.auth_token_file, "--auth-token-file").decode().strip()
            if not token:
                raise StartupError(f"--auth-token-file {s.auth_token_file} is empty")
        credentials = None
        if s.tls_cert is not None and s.tls_key is not None:
            ca = _read(s.tls_client_ca, "--tls-client-ca") if s.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(_read(s.tls_key, "--tls-key"), _read(s.tls_cert, "--tls-cert"))],
                root_certificates=ca,
                require_client_auth=ca is not None,
            )
        if both_onnxruntimes_installed():
            logger.error(
                "both onnxruntime and onnxruntime-gpu are installed; they provide the same "
                "module and break each other: pip uninstall one of them"
            )
        try:
            await self.manager.start(self.load_models)
        except ServingError as exc:
            raise StartupError(exc.message) from exc

        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 1 if self.worker else 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        interceptors = [BearerTokenInterceptor(token)] if token else []
        server = grpc.aio.server(options=options, interceptors=interceptors)
        add_guarded(pb_grpc.add_GRPCInferenceServiceServicer_to_server, self.servicer, server)
        add_guarded(health_pb2_grpc.add_HealthServicer_to_server, self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server, pool=POOL
        )
        address = f"{_bracket(s.host)}:{s.grpc_port}"
        try:
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if not port:
            raise StartupError(f"cannot listen for gRPC on {address} (port in use?)")
        try:
            if not self.worker:
                self._http = MetricsHttpServer(
                    make_app(self.metrics.registry), s.host, s.metrics_port
                )
        except OSError as exc:
            raise StartupError(
                f"cannot listen for metrics on {s.host}:{s.metrics_port}: {exc.strerror}"
            ) from exc
        await server.start()
        self._grpc = server
        if self._http is not None:
            self._http.start()
        self.servicer.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        ready = sorted({name for name, _ in self.manager.ready_keys()})
        failed = sorted(
            name for name, entry in self.manager.models.items() if not entry.ready_versions()
        )
        metrics_port = self._http.port if self._http is not None else s.metrics_port
        logger.info(
            "dlserve %s %d model(s) %s on grpc %s, metrics http://%s:%d/metrics%s",
            "worker serving" if self.worker else "serving", len(ready), ready,
            f"{s.host}:{port}", s.host, metrics_port, f"; NOT ready: {failed}" if failed else "",
        )  # fmt: skip
        return RunningServer(port, metrics_port)

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
        self.servicer.ready = False
        await self.health.enter_graceful_shutdown()
        drain = asyncio.ensure_future(self.manager.drain(timeout))
        force = asyncio.ensure_future(self._force.wait())
        await asyncio.wait((drain, force), return_when=asyncio.FIRST_COMPLETED)
        if drain.done() and not drain.result():
            logger.warning("exit timeout: requests still queued were refused")
        force.cancel()
        await self._linger(deadline)
        if self._grpc is not None:
            # The answers of drained requests go out (a moment is left for
            # them even when the timeout is spent); streams get what is left
            # of the timeout to finish. Anything after that is cancelled.
            left = max(SEND_GRACE_SECS, deadline - loop.time())
            grace = 0.0 if self._force.is_set() else left
            await self._grpc.stop(grace=grace)
        if not drain.done():
            drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)
        await self.manager.stop()
        if self._http is not None:
            self._http.stop()
        # A batch already inside onnxruntime cannot be interrupted: wait for it.
        self.executor.shutdown(wait=True, cancel_futures=True)
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
        while not self._force.is_set():
            quiet = time.monotonic() - self.manager.last_refusal
            left = end - loop.time()
            if quiet >= LINGER_QUIET_SECS or left <= 0:
                return
            await asyncio.sleep(min(LINGER_QUIET_SECS - quiet, left))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class _Undecodable:
    """What a handler receives instead of a request whose bytes do not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return deserialize


def _not_a_message(method: str, request: _Undecodable) -> str:
    return undecodable_message(method, request.reason)


def _guard_unary(behavior: Any, method: str) -> Any:
    """Wrap a unary-request handler (unary or server-streaming response)."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if type(request) is _Undecodable:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, _not_a_message(method, request)
                )
            async for response in behavior(request, context):
                yield response

        return generator

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if type(request) is _Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _not_a_message(method, request))
        return await behavior(request, context)

    return handler


def _guard_stream_stream(behavior: Any, method: str) -> Any:
    """A message that does not parse ends the request stream there: the
    requests before it are still answered, then the call ends with
    INVALID_ARGUMENT."""

    def checked(requests: Any, bad: list[_Undecodable]) -> AsyncIterator[Any]:
        async def iterate() -> AsyncIterator[Any]:
            async for request in requests:
                if type(request) is _Undecodable:
                    bad.append(request)
                    return
                yield request

        return iterate()

    async def refuse(context: grpc.aio.ServicerContext[Any, Any], bad: list[_Undecodable]) -> None:
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _not_a_message(method, bad[0]))

    if inspect.isasyncgenfunction(behavior):

        async def generator(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            bad: list[_Undecodable] = []
            async for response in behavior(checked(requests, bad), context):
                yield response
            await refuse(context, bad)

        return generator

    async def handler(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        bad: list[_Undecodable] = []
        result = await behavior(checked(requests, bad), context)
        await refuse(context, bad)
        return result

    return handler


class _Capture:
    """Stands in for the server to collect a generated ``add_*_to_server``'s handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.service, self.handlers = service, dict(handlers)


def add_guarded(add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register a generated service so that a request body that is not a valid
    protobuf message is answered INVALID_ARGUMENT (a client mistake), not
    grpc's UNKNOWN with a traceback in the log."""
    capture = _Capture()
    add(servicer, capture)
    if not capture.handlers:  # generated code of another shape: register as it is
        add(servicer, server)
        return
    guarded = {}
    for name, h in capture.handlers.items():
        method = f"/{capture.service}/{name}"
        if capture.service == SERVICE_NAME and name in RAW_REQUEST_METHODS:
            # The handler parses the bytes itself: no wrapper on the hot path.
            guarded[name] = h._replace(request_deserializer=None)
            continue
        deserializer = _safe(h.request_deserializer) if h.request_deserializer else None
        if h.unary_unary is not None:
            h = h._replace(unary_unary=_guard_unary(h.unary_unary, method))
        elif h.unary_stream is not None:
            h = h._replace(unary_stream=_guard_unary(h.unary_stream, method))
        elif h.stream_stream is not None:
            h = h._replace(stream_stream=_guard_stream_stream(h.stream_stream, method))
        else:  # client streaming: none in these services; keep grpc's handling
            deserializer = h.request_deserializer
        guarded[name] = h._replace(request_deserializer=deserializer)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(capture.service, guarded),)
    )
    server.add_registered_method_handlers(capture.service, guarded)


async def serve(
    settings: ServingSettings,
    load_models: list[str] | None = None,
    *,
    worker: bool = False,
    on_started: Callable[[RunningServer], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain and return 0."""
    server = Server(settings, load_models, worker=worker)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    try:
        running = await server.start()
    except BaseException:
        server.executor.shutdown(wait=False, cancel_futures=True)
        raise
    if on_started is not None:
        on_started(running)
    await server.wait()
    await server.stop()
    return 0
