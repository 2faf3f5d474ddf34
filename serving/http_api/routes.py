"""The REST API as a raw ASGI callable (no framework): route on method and
path segments, one ``InferenceService`` call, encode. Errors become HTTP
statuses through ``STATUS_BY_CODE`` only, from ``errors.code_name``.

Every answer but a success is ``{"error": "<message>"}``. The service
counts every inference outcome; this module counts only the infer bodies
that do not decode (``service.record_failure``), as the gRPC edge does.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import unquote_to_bytes

import orjson

from serving.bearer import expected_digest, token_matches
from serving.errors import InvalidInput, ServingError, ShuttingDown, Unauthenticated, code_name
from serving.http_api import codec, settings_views, shm_routes, views
from serving.service import InferenceService
from serving.shm import ShmRequest

logger = logging.getLogger(__name__)
_now = time.perf_counter

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

#: The code names of ``serving.errors`` -> HTTP status (the one table).
STATUS_BY_CODE = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 400,
    "RESOURCE_EXHAUSTED": 413,
    "INTERNAL": 500,
    "CANCELLED": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
}
#: Extensions of the REST edge on top of the service's.
EXTENSIONS = ("binary_tensor_data",)
AUTH_MESSAGE = "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"


class HttpError(Exception):
    """An answer decided by the HTTP edge itself (404, 405, 413, ...)."""

    def __init__(self, status: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class _Gone(Exception):
    """The client disconnected before its body arrived."""


class Request:
    """What a handler needs of the HTTP request."""

    __slots__ = ("receive", "headers", "started")

    def __init__(self, receive: Receive, headers: dict[bytes, bytes], started: float) -> None:
        self.receive = receive
        self.headers = headers
        self.started = started


Reply = tuple[int, bytes, Headers]


def _json(body: Any, status: int = 200) -> Reply:
    return status, orjson.dumps(body), [(b"content-type", _JSON)]


class RestApp:
    def __init__(self, service: InferenceService, *, token: str | None, max_body: int) -> None:
        self.service = service
        self.max_body = max_body
        self._expected = expected_digest(token) if token else None
        #: Set by the frontend when the server drains: every answer closes its
        #: connection, and new requests other than inference and health get 503
        #: (inference reaches the service, which refuses and counts it).
        self.draining = False

    # -- ASGI ----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = _now()
        headers = dict(scope["headers"])
        try:
            status, body, extra = await self._dispatch(scope, Request(receive, headers, started))
        except _Gone:
            return
        except HttpError as exc:
            status, body, extra = exc.status, _error(exc.message), exc.headers
            extra = [(b"content-type", _JSON), *extra]
        except ServingError as exc:
            status, body, extra = STATUS_BY_CODE.get(code_name(exc), 500), _error(exc.message), []
            if isinstance(exc, shm_routes.SharedMemoryDisabled):
                status = 400  # Triton's HTTP answer to --allow-client-shm=false
            extra = [(b"content-type", _JSON)]
            if status == 401:
                extra.append((b"www-authenticate", b"Bearer"))
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            status, body = 500, _error("internal error (see the server log)")
            extra = [(b"content-type", _JSON)]
        if status == 200 and body:
            accept = headers.get(b"accept-encoding")
            if accept:
                body, extra = _compress(body, extra, accept)
        extra.append((b"content-length", str(len(body)).encode()))
        if self.draining or status == 413:
            extra.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})

    async def _dispatch(self, scope: Scope, request: Request) -> Reply:
        method = scope["method"]
        parts = _segments(scope.get("raw_path") or scope["path"].encode())
        if not parts or parts[0] != "v2":
            raise HttpError(404, f"no such path {_shown(scope)}; the API lives under /v2")
        rest = parts[1:]
        if rest and rest[0] == "health" and len(rest) == 2 and rest[1] in ("live", "ready"):
            _allow(method, "GET")
            if rest[1] == "live":
                return 200, b"", []
            if not self.service.server_ready():
                raise HttpError(503, "the server is not ready (starting or draining)")
            return 200, b"", []
        self._authenticate(request.headers)
        if rest and rest[0] == "models" and len(rest) >= 2:
            return await self._model_route(method, rest[1:], request, scope)
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        service = self.service
        if not rest:
            _allow(method, "GET")
            return _json(views.server_metadata(service.server_metadata(), EXTENSIONS))
        if rest[0] == "repository":
            if rest[1:] == ["index"]:
                _allow(method, "POST")
                body = await self._json_body(request)
                ready = codec.flag(body.get("ready"), "'ready'") if body else False
                return _json(views.repository_index(service.repository_index(ready)))
            if len(rest) == 4 and rest[1] == "models" and rest[3] in ("load", "unload"):
                _allow(method, "POST")
                body = await self._json_body(request)
                if rest[3] == "load":
                    params = body.get("parameters") if body else None
                    params = (
                        codec.json_object(params, "'parameters'") if params is not None else None
                    )
                    await service.load_model(rest[2], params)
                else:
                    await service.unload_model(rest[2])
                return 200, b"", []
        call = shm_routes.route(rest, method, _allow) if rest[0] in shm_routes.ROOTS else None
        if call is not None:  # shared memory (None: no such path, the 404 below)
            body = await self._json_body(request) if call[1] == "register" else None
            result = shm_routes.answer(service.shm, call, body)
            return (200, b"", []) if result is None else _json(result)
        if rest == ["trace", "setting"] or rest == ["logging"]:
            return await self._settings(method, rest[0], "", request)
        raise HttpError(404, f"no such path {_shown(scope)}")

    async def _model_route(
        self, method: str, rest: list[str], request: Request, scope: Scope
    ) -> Reply:
        service = self.service
        if rest == ["stats"]:
            _allow(method, "GET")
            if self.draining:
                raise ShuttingDown("the server is shutting down; retry on another instance")
            return _json(views.statistics(service.statistics()))
        name, version, tail = rest[0], "", rest[1:]
        if len(tail) >= 2 and tail[0] == "versions":
            version, tail = tail[1], tail[2:]
        if tail == ["trace", "setting"] and not version:
            return await self._settings(method, "trace", name, request)
        if len(tail) > 1:
            raise HttpError(404, f"no such path {_shown(scope)}")
        action = tail[0] if tail else ""
        if action == "infer":
            _allow(method, "POST")
            return await self._infer(name, version, request)
        if action not in ("", "ready", "config", "stats"):
            raise HttpError(404, f"no such path {_shown(scope)}")
        _allow(method, "GET")
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        if action == "ready":
            if service.model_ready(name, version):
                return 200, b"", []
            service.model_metadata(name, version)  # raises NOT_FOUND / UNAVAILABLE
            raise HttpError(503, "the model is not ready")
        if action == "config":
            return _json(views.model_config(service.model_config(name, version)))
        if action == "stats":
            return _json(views.statistics(service.statistics(name, version)))
        return _json(views.model_metadata(service.model_metadata(name, version)))

    async def _settings(self, method: str, kind: str, model: str, request: Request) -> Reply:
        """GET (read) or POST (change) the trace settings (of ``model``, or
        the global ones) or the log settings."""
        if method not in ("GET", "POST"):
            allow = [(b"allow", b"GET, POST")]
            raise HttpError(
                405, f"method {method[:16]} is not allowed here; use GET or POST", allow
            )
        body = (await self._json_body(request) or {}) if method == "POST" else None
        return _json(settings_views.answer(self.service, kind, model, body))

    # -- inference -----------------------------------------------------------

    async def _infer(self, name: str, version: str, request: Request) -> Reply:
        shm = ShmRequest(self.service.shm)  # its regions, held until the answer is written
        try:
            return await self._run(name, version, request, shm)
        finally:
            shm.release()

    async def _run(self, name: str, version: str, request: Request, shm: ShmRequest) -> Reply:
        service = self.service
        body = await self._body(request)
        try:
            head_len = request.headers.get(b"inference-header-content-length")
            if head_len is None:
                header, binary = codec.parse_header(body), memoryview(b"")
            else:
                size = _header_length(head_len, len(body))
                view = memoryview(body)
                header, binary = codec.parse_header(view[:size]), view[size:]
            decoded = codec.decode_request(header, binary, name, version, shm)
        except ServingError as exc:  # never reaches the service: counted here
            service.record_failure(name, version, exc)
            raise
        tracing = service.tracing
        trace = tracing.start_http(name, request.headers, request.started) if tracing.on else None
        response = await service.answer(
            service.begin(decoded.request, request.started, None, trace)
        )
        payload, json_len = codec.encode_response(response, decoded)
        if trace is not None:
            trace.end()
        if json_len is None:
            return 200, payload, [(b"content-type", _JSON)]
        headers = [(b"content-type", _OCTETS),
                   (b"inference-header-content-length", str(json_len).encode())]  # fmt: skip
        return 200, payload, headers

    # -- bodies, auth --------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        """The whole body, decompressed; 413 past max_body, decided from
        Content-Length before reading when the client sent one."""
        limit = self.max_body
        length = request.headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise _too_large(int(length), limit)
        chunks: list[bytes] = []
        size = 0
        receive = request.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Gone
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

    async def _json_body(self, request: Request) -> dict[str, Any] | None:
        body = await self._body(request)
        if not body.strip():
            return None
        return codec.parse_header(body)

    def _authenticate(self, headers: dict[bytes, bytes]) -> None:
        if self._expected is None:
            return
        if not token_matches(headers.get(b"authorization", b""), self._expected):
            raise Unauthenticated(AUTH_MESSAGE)


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(
            405,
            f"method {method[:16]} is not allowed here; use {allowed}",
            [(b"allow", allowed.encode())],
        )


def _segments(raw: bytes) -> list[str]:
    parts = raw.split(b"/")
    if not parts or parts[0] != b"":
        raise HttpError(404, "the path must start with /v2")
    try:
        if b"%" not in raw:  # nothing to unquote: the common case, 6x faster
            return raw[1:].decode("utf-8").split("/") if raw else []
        return [unquote_to_bytes(p).decode("utf-8") for p in parts[1:]]
    except UnicodeDecodeError:
        raise HttpError(400, "the path is not UTF-8 once percent-decoded") from None


def _shown(scope: Scope) -> str:
    path = str(scope.get("path", ""))
    return repr(path if len(path) <= 80 else path[:80] + "...")


def _header_length(value: bytes, total: int) -> int:
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


def _compress(body: bytes, headers: Headers, accept: bytes) -> tuple[bytes, Headers]:
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
