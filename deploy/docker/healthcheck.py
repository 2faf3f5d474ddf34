"""Container health check: ask the server's gRPC health service (grpc.health.v1).

Used by the images' HEALTHCHECK. Exit code 0 when the overall service ("")
reports SERVING, 1 otherwise (not serving, unreachable, timeout). It needs only
grpcio and grpcio-health-checking, both in the serving install, and talks to
127.0.0.1 inside the container. The port follows SERVING_GRPC_PORT (the
server's own settings variable) and defaults to 8001.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = os.environ.get("SERVING_GRPC_PORT", "8001")
    timeout = float(os.environ.get("DLSERVE_HEALTHCHECK_TIMEOUT", "3"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
