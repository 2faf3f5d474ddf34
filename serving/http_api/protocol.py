"""uvicorn's httptools protocol with the bounds a port facing anyone needs:
a request head (request line and headers) must arrive within
``head_timeout`` seconds of its first byte (or of the connection) and hold
at most ``MAX_HEAD_BYTES``; a body must arrive within ``body_timeout``
seconds of its head. uvicorn bounds neither (its keep-alive timeout covers
idle connections only), so a client trickling a head or a body could hold
a connection, and with enough of them every slot of ``limit_concurrency``.
A head that is too large gets 431 with a JSON error; a late one is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Largest request head, in bytes (as the metrics port).
MAX_HEAD_BYTES = 16 * 1024


def bounded_protocol(head_timeout: float, body_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these timeouts."""

    class BoundedHttpTools(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(head_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            self._head_bytes = 0
            self._arm(head_timeout)
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._arm(body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._refused:  # a refused head already has its answer
                super().send_400_response(msg)

        def _count(self, n: int) -> None:
            self._head_bytes += n
            if self._head_bytes > MAX_HEAD_BYTES and not self._refused:
                self._refused = True
                body = orjson.dumps({"error": f"the request head is over {MAX_HEAD_BYTES} bytes"})
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                    b"content-type: application/json\r\nconnection: close\r\n"
                    + b"content-length: %d\r\n\r\n" % len(body)
                    + body
                )
                self.transport.close()
                raise ValueError("request head too large")  # stops the parser

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            self.transport.close()  # a head or a body that did not arrive in time

    return BoundedHttpTools


__all__: Any = ["MAX_HEAD_BYTES", "bounded_protocol"]
