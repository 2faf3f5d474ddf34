"""The REST edge's bodies and its own errors: a request's body read whole
within --max-message-bytes (413 past it, decided from Content-Length before
reading when there is one), inflated from gzip or deflate, an answer
compressed for ``Accept-Encoding``, and the length of a binary request's
JSON header."""

from __future__ import annotations

import zlib
from typing import Any, Awaitable, Callable, MutableMapping

from serving.errors import InvalidInput

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Headers = list[tuple[bytes, bytes]]


class HttpError(Exception):
    """An answer decided by the HTTP edge itself (404, 405, 413, ...)."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class Gone(Exception):
    """The client disconnected before its body arrived."""


class Request:
    """What a handler needs of the HTTP request."""

    __slots__ = ("receive", "headers", "started")

    def __init__(self, receive: Receive, headers: dict[bytes, bytes], started: float) -> None:
        self.receive = receive
        self.headers = headers
        self.started = started


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, decompressed; 413 past ``limit``, decided from
    Content-Length before reading when the client sent one."""
    length = request.headers.get(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(int(length), limit)
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Gone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get(b"content-encoding")
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        body = _decompress(body, encoding.strip().lower(), limit)
    return body


def header_length(value: bytes, total: int) -> int:
    if not value.strip().isdigit():
        raise InvalidInput(
            "Inference-Header-Content-Length must be the JSON header's length in bytes, "
            f"got {value[:40]!r}"
        )
    size = int(value)
    if size > total:
        raise InvalidInput(
            f"Inference-Header-Content-Length is {size}, but the body holds {total} bytes"
        )
    return size


def _too_large(size: int, limit: int) -> HttpError:
    return HttpError(
        413,
        f"the request body is {size} bytes, over --max-message-bytes ({limit}); "
        "send fewer rows per request",
    )


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        wbits = 31
    elif encoding == b"deflate":
        wbits = 15
    else:
        raise InvalidInput(
            f"Content-Encoding {encoding[:40]!r} is not supported; use gzip, deflate or none"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {encoding.decode()} data ({exc})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise HttpError(
            413,
            f"the request body inflates to over --max-message-bytes ({limit}); "
            "send fewer rows per request",
        )
    if not inflater.eof:
        raise InvalidInput(f"the {encoding.decode()} body is truncated")
    return data


def compress(body: bytes, headers: Headers, accept: bytes) -> tuple[bytes, Headers]:
    for token in accept.lower().split(b","):
        name, _, params = token.partition(b";")
        name = name.strip()
        if params.replace(b" ", b"") in (b"q=0", b"q=0.0"):
            continue
        if name == b"gzip":
            deflater = zlib.compressobj(1, zlib.DEFLATED, 31)
        elif name == b"deflate":
            deflater = zlib.compressobj(1, zlib.DEFLATED, 15)
        else:
            continue
        data = deflater.compress(body) + deflater.flush()
        return data, [*headers, (b"content-encoding", name), (b"vary", b"Accept-Encoding")]
    return body, headers
