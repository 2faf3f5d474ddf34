"""Bearer-token authentication for the inference and repository RPCs.

Health checks, reflection, ServerLive and ServerReady stay open so probes
work without the token; everything else (inference, metadata, statistics,
the repository API) needs ``authorization: Bearer <token>``. The scheme is
case-insensitive and one or more spaces may follow it (RFC 6750, RFC 7235's
1*SP); the token is compared in constant time, as
SHA-256 digests so that not even its length leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Awaitable, Callable, TypeAlias

import grpc

OPEN_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ServerLive",
        "/inference.GRPCInferenceService/ServerReady",
    }
)
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
STREAMING_METHODS = frozenset({"/inference.GRPCInferenceService/ModelStreamInfer"})
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
MESSAGE = "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'"


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._expected = _digest(token.encode())

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

        async def deny_stream(iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

        self._deny_unary: Handler = grpc.unary_unary_rpc_method_handler(deny_unary)
        self._deny_stream: Handler = grpc.stream_stream_rpc_method_handler(deny_stream)

    def allows(self, authorization: str | bytes) -> bool:
        """Whether an ``authorization`` header value carries the token."""
        value = authorization.encode() if isinstance(authorization, str) else authorization
        scheme, _, credential = value.partition(b" ")
        credential = credential.lstrip(b" ")  # RFC 6750: "Bearer" 1*SP token
        # Always hash and compare, whatever the scheme, so a wrong scheme
        # takes as long as a wrong token.
        match = hmac.compare_digest(_digest(credential), self._expected)
        return match and scheme.lower() == b"bearer"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = details.method
        if method in OPEN_METHODS or method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                if self.allows(value):
                    return await continuation(details)
                break
        return self._deny_stream if method in STREAMING_METHODS else self._deny_unary
