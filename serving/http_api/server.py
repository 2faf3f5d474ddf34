"""The REST front door: ``RestApp`` on uvicorn (httptools parser) on the
composition root's running event loop. Building, binding, draining and
stopping it, nothing else.

The listening socket is built here (SO_REUSEPORT for ``--workers N``, so
the workers share the HTTP port as they share the gRPC one) and handed to
uvicorn; uvicorn's ``serve()`` is not used, because it installs its own
SIGTERM/SIGINT handlers and the App owns those: ``startup``, ``main_loop``
and ``shutdown`` are called instead.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Callable

import uvicorn

from serving.http_api.protocol import bounded_protocol
from serving.http_api.routes import RestApp
from serving.service import InferenceService
from serving.settings import ServingSettings

#: uvicorn's own logger: its per-connection chatter stays out of the log.
logging.getLogger("uvicorn.error").setLevel(logging.WARNING)

#: Open connections plus requests in progress before new ones get 503.
LIMIT_CONCURRENCY = 4096
#: Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_SECS = 15
BACKLOG = 2048
#: Seconds an answered connection may take to close before it is dropped.
CLOSE_SECS = 0.5


class HttpFrontend:
    def __init__(
        self,
        settings: ServingSettings,
        service: InferenceService,
        *,
        token: str | None,
        reuse_port: bool,
    ) -> None:
        s = settings
        self.app = RestApp(service, token=token, max_body=s.max_message_bytes)
        tls = {}
        if s.tls_cert is not None and s.tls_key is not None:
            tls = {"ssl_certfile": str(s.tls_cert), "ssl_keyfile": str(s.tls_key)}
            if s.tls_client_ca is not None:
                tls["ssl_ca_certs"] = str(s.tls_client_ca)
        self.config = uvicorn.Config(
            self.app, host=s.host, port=s.http_port, loop="none",
            http=bounded_protocol(s.http_head_timeout_secs, s.http_body_timeout_secs),
            ws="none", lifespan="off", interface="asgi3", log_config=None, access_log=False,
            server_header=False, limit_concurrency=LIMIT_CONCURRENCY,
            timeout_keep_alive=KEEP_ALIVE_SECS, backlog=BACKLOG,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca is not None else ssl.CERT_NONE,
            **tls,  # type: ignore[arg-type]
        )  # fmt: skip
        self.server = uvicorn.Server(self.config)
        self.host = s.host
        self.port = s.http_port
        self.reuse_port = reuse_port
        self._socket: socket.socket | None = None
        self._main: asyncio.Future[None] | None = None

    def bind(self) -> int:
        """Listen; the port. Raises OSError with a one-line message."""
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise OSError(f"cannot listen for HTTP on {self.host}: {exc.strerror}") from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen for HTTP on {self.host}:{self.port}: {exc.strerror}"
            ) from exc
        sock.setblocking(False)
        self._socket = sock
        return int(sock.getsockname()[1])

    async def start(self) -> None:
        assert self._socket is not None, "bind() first"
        config = self.config
        if not config.loaded:
            config.load()  # builds the TLS context; the files were checked already
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self._socket])
        self._main = asyncio.ensure_future(self.server.main_loop())

    def enter_drain(self) -> None:
        self.app.draining = True

    async def stop(self, grace: float) -> None:
        """Close the listener and the idle connections; the requests still
        running get ``grace`` seconds, then are cancelled. Connections left
        open after their answers went out (a TLS peer that never sends its
        close_notify) are dropped after CLOSE_SECS instead of the 30 s of
        asyncio's TLS shutdown timeout."""
        if self._main is None:
            return
        server, state = self.server, self.server.server_state
        server.should_exit = True
        await self._main
        for listener in server.servers:
            listener.close()
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        await _until(lambda: not state.tasks, loop.time() + grace)
        for task in list(state.tasks):
            task.cancel()
        await _until(lambda: not state.connections, loop.time() + CLOSE_SECS)
        for connection in list(state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for listener in server.servers:
            await listener.wait_closed()
        self._main = None
        self._socket = None


async def _until(done: Callable[[], bool], deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while not done() and loop.time() < deadline:
        await asyncio.sleep(0.02)
