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
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import unquote_to_bytes

import orjson

from serving.bearer import expected_digest, token_matches
from serving.errors import ServingError, ShuttingDown, Unauthenticated, code_name
from serving.http_api import codec, settings_views, shm_routes, views
from serving.http_api.bodies import (
    Gone,
    Headers,
    HttpError,
    Receive,
    Request,
    compress,
    header_length,
    read_body,
)
from serving.service import InferenceService
from serving.shm import ShmRequest

logger = logging.getLogger(__name__)
_now = time.perf_counter

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

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
            reply = self._dispatch(scope, Request(receive, headers, started))
            status, body, extra = reply if isinstance(reply, tuple) else await reply
        except Gone:
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
                body, extra = compress(body, extra, accept)
        extra.append((b"content-length", str(len(body)).encode()))
        if self.draining or status == 413:
            extra.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": extra})
        await send({"type": "http.response.body", "body": body})

    def _dispatch(self, scope: Scope, request: Request) -> Reply | Awaitable[Reply]:
        """The answer, or the coroutine of a route that waits (a body, the
        service): a request costs no coroutine per routing level."""
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
            return self._model_route(method, rest[1:], request, scope)
        return self._server_route(method, rest, request, scope)

    async def _server_route(
        self, method: str, rest: list[str], request: Request, scope: Scope
    ) -> Reply:
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

    def _model_route(
        self, method: str, rest: list[str], request: Request, scope: Scope
    ) -> Reply | Awaitable[Reply]:
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
            return self._settings(method, "trace", name, request)
        if len(tail) > 1:
            raise HttpError(404, f"no such path {_shown(scope)}")
        action = tail[0] if tail else ""
        if action == "infer":
            _allow(method, "POST")
            return self._infer(name, version, request)
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
        service = self.service
        shm = ShmRequest(service.shm)  # its regions, held until the answer is written
        try:
            body = await read_body(request, self.max_body)
            decoded = _decode(service, name, version, request.headers, body, shm)
            tracing = service.tracing
            trace = (
                tracing.start_http(name, request.headers, request.started) if tracing.on else None
            )
            response = await service.answer(
                service.begin(decoded.request, request.started, None, trace)
            )
            payload, json_len = codec.encode_response(response, decoded)
            if trace is not None:
                trace.end()
        finally:
            shm.release()
        if json_len is None:
            return 200, payload, [(b"content-type", _JSON)]
        headers = [(b"content-type", _OCTETS),
                   (b"inference-header-content-length", str(json_len).encode())]  # fmt: skip
        return 200, payload, headers

    # -- bodies, auth --------------------------------------------------------

    async def _json_body(self, request: Request) -> dict[str, Any] | None:
        body = await read_body(request, self.max_body)
        if not body.strip():
            return None
        return codec.parse_header(body)

    def _authenticate(self, headers: dict[bytes, bytes]) -> None:
        if self._expected is None:
            return
        if not token_matches(headers.get(b"authorization", b""), self._expected):
            raise Unauthenticated(AUTH_MESSAGE)


def _decode(
    service: InferenceService, name: str, version: str, headers: dict[bytes, bytes], body: bytes,
    shm: ShmRequest,
) -> codec.Decoded:  # fmt: skip
    """An infer body as a request; one that does not decode never reaches the
    service, so it is counted here."""
    try:
        head_len = headers.get(b"inference-header-content-length")
        if head_len is None:
            header, binary = codec.parse_header(body), memoryview(b"")
        else:
            size = header_length(head_len, len(body))
            view = memoryview(body)
            header, binary = codec.parse_header(view[:size]), view[size:]
        return codec.decode_request(header, binary, name, version, shm)
    except ServingError as exc:
        service.record_failure(name, version, exc)
        raise


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
