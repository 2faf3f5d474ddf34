"""Bearer-token authentication for the inference and repository RPCs.

Health checks, reflection, ServerLive and ServerReady stay open so probes
work without the token; everything else (inference, metadata, statistics,
the repository API) needs ``authorization: Bearer <token>``, checked by
``serving.bearer.token_matches`` (the rule the REST edge uses too).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeAlias

import grpc

from serving.bearer import expected_digest, token_matches

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


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = expected_digest(token)

        async def deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

        async def deny_stream(iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

        self._deny_unary: Handler = grpc.unary_unary_rpc_method_handler(deny_unary)
        self._deny_stream: Handler = grpc.stream_stream_rpc_method_handler(deny_stream)

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
                if token_matches(value, self._expected):
                    return await continuation(details)
                break
        return self._deny_stream if method in STREAMING_METHODS else self._deny_unary
