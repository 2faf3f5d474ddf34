"""Container health check: ``GET /v2/health/ready`` on the server's REST port.

Used by the images' HEALTHCHECK and compose's healthcheck. Exit code 0 when
the server answers 200 (started, models loaded, not draining), 1 otherwise
(503, unreachable, timeout). It needs only the standard library and talks to
127.0.0.1 inside the container, so neither curl nor a proxy is involved. The
port follows SERVING_HTTP_PORT (the server's own settings variable) and
defaults to 8000. With SERVING_HTTP_PORT=0 (REST off) it asks the gRPC health
service (grpc.health.v1, overall service "") on SERVING_GRPC_PORT (default
8001) instead.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check_http(port: str, timeout: float) -> int:
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(200).decode("utf-8", "replace")
        print(f"unhealthy: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # refused, timeout, bad port
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    print("READY" if status == 200 else f"HTTP {status}")
    return 0 if status == 200 else 1


def check_grpc(port: str, timeout: float) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        # Never through an http_proxy of the environment: the server is local.
        options = [("grpc.enable_http_proxy", 0)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main() -> int:
    timeout = float(os.environ.get("DLSERVE_HEALTHCHECK_TIMEOUT", "3"))
    http_port = os.environ.get("SERVING_HTTP_PORT", "8000").strip()
    if http_port == "0":
        return check_grpc(os.environ.get("SERVING_GRPC_PORT", "8001"), timeout)
    return check_http(http_port, timeout)


if __name__ == "__main__":
    sys.exit(main())
