"""``--host ::``: every port (gRPC, REST, metrics) listens on IPv6 and, as a
Linux dual-stack socket, on IPv4 too. The metrics port used to take IPv4
only, so ``--host ::`` failed at startup. Loopback only: [::1] and 127.0.0.1."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client import CollectorRegistry

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from serving.http_server import MetricsHttpServer
from serving.metrics_app import make_app


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    repo: Path = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp", model=mlp(features=2, hidden=(8,), classes=2))
    with InProcessServer(repo, "--host", "::") as running:
        yield running


def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["::1", "127.0.0.1"])
def test_every_port_answers_on_both_families(server: InProcessServer, host: str) -> None:
    status, body = get(host, server.metrics_port, "/metrics")
    assert status == 200 and b"dlserve_request_duration_seconds" in body
    assert get(host, server.http_port, "/v2/health/ready")[0] == 200
    address = f"[{host}]" if ":" in host else host
    with triton.InferenceServerClient(f"{address}:{server.grpc_port}") as client:
        x = triton.InferInput("input", [1, 2], "FP32")
        x.set_data_from_numpy(np.ones((1, 2), np.float32))
        assert client.infer("mlp", [x]).as_numpy("probabilities").shape == (1, 2)


def test_the_metrics_port_takes_a_bracketed_ipv6_address() -> None:
    http = MetricsHttpServer(make_app(CollectorRegistry()), "[::1]", 0)
    http.start()
    try:
        assert get("::1", http.port, "/metrics")[0] == 200
    finally:
        http.stop()
