"""Undecodable request bodies: a client mistake, answered INVALID_ARGUMENT.

grpc's generated ``add_*_to_server`` functions register handlers whose
deserializer raises on bytes that are not a protobuf message, which grpc
answers UNKNOWN with a traceback in the log. ``add_guarded`` registers the
same handlers with a deserializer that never raises and a handler wrapper
that refuses such a request cleanly. This is the one mechanism for it (an
interceptor cannot change a deserializer); ModelInfer, the hot path, is
registered with no deserializer and no serializer at all: it parses its
request bytes itself and returns its answer serialized.
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from serving.grpc_api.servicer import RAW_METHODS, SERVICE_NAME, undecodable_message


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
        if capture.service == SERVICE_NAME and name in RAW_METHODS:
            # The handler parses and serializes itself: no wrapper on the hot path.
            guarded[name] = h._replace(request_deserializer=None, response_serializer=None)
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
