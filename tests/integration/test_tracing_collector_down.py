"""A collector that is down or stalls never slows or fails requests: the
exporter runs in the batch processor's thread, the request path only hands
it finished spans, and what cannot be delivered is dropped and counted in
``dlserve_trace_spans_dropped_total{reason}``."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from tests.integration.otlp_receiver import StallingCollector
from tests.support import free_port

#: Upper bound on waiting for the drop counter (a healthy run: about a second).
WAIT_SECS = 30.0


def flags(url: str, *more: str) -> list[str]:
    entries = ["level=TIMESTAMPS", "rate=1", f"opentelemetry,url={url}",
               "opentelemetry,bsp_schedule_delay=20", *more]  # fmt: skip
    return [arg for entry in entries for arg in ("--trace-config", entry)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "plain", model=mlp(seed=1))
    return repo


def dropped(server: InProcessServer) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    out = {}
    for line in lines:
        if line.startswith("dlserve_trace_spans_dropped_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def wait_for_drops(server: InProcessServer, reason: str) -> float:
    deadline = time.monotonic() + WAIT_SECS
    while (count := dropped(server).get(reason, 0.0)) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def infer_many(url: str, n: int) -> None:
    client = triton.InferenceServerClient(url)
    x = triton.InferInput("input", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    try:
        for _ in range(n):
            assert client.infer("plain", [x]).as_numpy("probabilities").shape == (1, 2)
    finally:
        client.close()


def test_unreachable_collector(repo: Path) -> None:
    """Nothing listens at the URL: every request is answered, every span
    the exporter could not deliver is counted."""
    url = f"http://127.0.0.1:{free_port()}/v1/traces"
    with InProcessServer(repo, *flags(url, "opentelemetry,timeout=1")) as server:
        assert dropped(server) == {"queue_full": 0.0, "export_failed": 0.0}
        infer_many(server.url, 20)
        assert wait_for_drops(server, "export_failed") >= 5  # at least one trace's spans
        assert server.app.service.tracing.on


def test_stalled_collector_never_holds_up_requests(repo: Path) -> None:
    """The collector holds the first export unanswered: requests go on being
    answered meanwhile (while it still holds it), spans past the queue's
    capacity are dropped at once, and the held export counts as failed once
    the collector refuses it."""
    with StallingCollector() as collector:
        args = flags(collector.url, "opentelemetry,timeout=60",
                     "opentelemetry,bsp_max_queue_size=20")  # fmt: skip
        with InProcessServer(repo, *args) as server:
            infer_many(server.url, 1)
            assert collector.arrived.wait(WAIT_SECS), "no export reached the collector"
            infer_many(server.url, 50)
            # Answered while the export was still held: the request path did
            # not wait for it.
            assert not collector.released.is_set() and collector.held == 1
            assert wait_for_drops(server, "queue_full") >= 50 * 5 - 20
            collector.release()
            assert wait_for_drops(server, "export_failed") >= 5
