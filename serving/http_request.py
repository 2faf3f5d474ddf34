"""Answering one request of the metrics port (``serving.http_server``) whose
head the selector has already read: wsgiref's request and server handlers,
reading the head from memory and then the socket, logging through
``logging``, quiet about a client that stopped reading."""

from __future__ import annotations

import io
import logging
import socket
import sys
from typing import IO, TYPE_CHECKING, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from serving.metrics_app import WsgiApp

if TYPE_CHECKING:
    from _typeshed import OptExcInfo, WriteableBuffer

logger = logging.getLogger(__name__)

#: Largest request head (request line and headers), in bytes.
MAX_HEAD_BYTES = 16 * 1024


class _PrefixedReader(io.RawIOBase):
    """A connection's input: the bytes the selector already read, then the socket."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._head:
            n = min(len(self._head), memoryview(buffer).nbytes)
            memoryview(buffer).cast("B")[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(buffer)


class _ServerHandler(ServerHandler):
    """wsgiref's, logging through ``logging`` and quiet about a client that
    stopped reading (its answer timed out: there is no one to tell)."""

    request_handler: WSGIRequestHandler  # wsgiref logs the request through it

    def handle_error(self) -> None:
        if isinstance(sys.exc_info()[1], TimeoutError):
            return
        super().handle_error()

    def log_exception(self, exc_info: OptExcInfo) -> None:
        environ: dict[str, Any] = getattr(self, "environ", {})
        logger.error(
            "metrics HTTP %s %.200r failed",
            environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
            exc_info=exc_info,
        )  # fmt: skip


class RequestHandler(WSGIRequestHandler):
    """Answers one request whose head has arrived in full (``head``)."""

    def __init__(
        self,
        sock: socket.socket,
        address: Any,
        listener: WSGIServer,
        *,
        head: bytes,
        app: WsgiApp,
    ) -> None:
        self._head = head
        self._app = app
        super().__init__(sock, address, listener)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader: the head is already read
        self.rfile = io.BufferedReader(_PrefixedReader(self._head, self.connection))

    def handle(self) -> None:
        """wsgiref's, with our ServerHandler."""
        self.raw_requestline = self.rfile.readline(MAX_HEAD_BYTES + 1)
        if not self.parse_request():  # it answered the client's mistake
            return
        handler = _ServerHandler(
            self.rfile, cast(IO[bytes], self.wfile), sys.stderr, self.get_environ(),
            multithread=False,
        )  # fmt: skip
        handler.request_handler = self
        handler.run(self._app)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass
