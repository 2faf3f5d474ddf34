"""The gRPC front door: KServe V2 inference (``InferenceServicer``),
grpc.health.v1 and reflection on one ``grpc.aio`` server over the
composition root's service. Building and stopping it, nothing else."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving._generated import POOL
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from serving.grpc_api.auth import BearerTokenInterceptor
from serving.grpc_api.guard import add_guarded
from serving.grpc_api.servicer import SERVICE_NAME, InferenceServicer
from serving.service import InferenceService
from serving.settings import ServingSettings

_SERVING = health_pb2.HealthCheckResponse.SERVING


class GrpcFrontend:
    def __init__(
        self,
        settings: ServingSettings,
        service: InferenceService,
        *,
        token: str | None,
        tls: grpc.ServerCredentials | None,
        reuse_port: bool,
    ) -> None:
        s = settings
        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        interceptors = [BearerTokenInterceptor(token)] if token else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        self.servicer = InferenceServicer(
            service, stream_window=s.stream_window, stream_window_bytes=s.stream_window_bytes
        )
        self.health = health.aio.HealthServicer()
        add_guarded(pb_grpc.add_GRPCInferenceServiceServicer_to_server, self.servicer, self.server)
        add_guarded(health_pb2_grpc.add_HealthServicer_to_server, self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server, pool=POOL
        )
        self.address = f"{_bracket(s.host)}:{s.grpc_port}"
        self._tls = tls

    def bind(self) -> int:
        """Listen; the port (0 in the settings picks a free one). Raises OSError."""
        try:
            if self._tls is not None:
                port = self.server.add_secure_port(self.address, self._tls)
            else:
                port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {self.address}: {exc}") from exc
        if not port:
            raise OSError(f"cannot listen for gRPC on {self.address} (port in use?)")
        return port

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", _SERVING)
        await self.health.set(SERVICE_NAME, _SERVING)

    async def enter_drain(self) -> None:
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace=grace)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
