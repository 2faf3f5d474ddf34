"""From the p99 to the trace: a real Prometheus (``--enable-feature=
exemplar-storage``) scrapes a tracing dlserve in OpenMetrics and stores the
trace ids of sampled requests as exemplars of the latency histogram; the
``query_exemplars`` API gives back ids of traces the collector received."""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from tests.integration.otlp_receiver import OtlpReceiver, roots
from tests.integration.prometheus_proc import Prometheus, wait_until
from tests.support import require_binary


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> Iterator[InProcessServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp-circle", model=mlp(features=2, hidden=(8,) * 6, classes=2))
    entries = ["level=TIMESTAMPS", "rate=10", f"opentelemetry,url={receiver.url}",
               "opentelemetry,bsp_schedule_delay=20"]  # fmt: skip
    with InProcessServer(repo, *[a for e in entries for a in ("--trace-config", e)]) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(
    server: InProcessServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    prom = Prometheus(
        require_binary("prometheus"), tmp_path_factory.mktemp("prometheus"),
        [f"127.0.0.1:{server.metrics_port}"], ("--enable-feature=exemplar-storage",),
    )  # fmt: skip
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def exemplars(prom: Prometheus, start: float) -> list[dict[str, Any]]:
    reply = prom.get(
        "/api/v1/query_exemplars",
        query='dlserve_request_duration_seconds_bucket{model="mlp-circle"}',
        start=f"{start:.3f}", end=f"{time.time() + 60:.3f}",
    )  # fmt: skip
    assert reply["status"] == "success", reply
    return [e for series in reply["data"] for e in series["exemplars"]]


def test_prometheus_stores_the_trace_ids_of_sampled_requests(
    prometheus: Prometheus, server: InProcessServer, receiver: OtlpReceiver
) -> None:
    start = time.time() - 1
    client = triton.InferenceServerClient(server.url)
    x = triton.InferInput("input", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    try:
        # Keep traffic going until a scrape has seen an exemplar (a healthy
        # run: one or two scrapes at the 1 s interval).
        def missing() -> bool:
            for _ in range(20):
                client.infer("mlp-circle", [x])
            return not exemplars(prometheus, start)

        assert not wait_until(missing, interval=0.2), "no exemplar stored"
    finally:
        client.close()
    found = exemplars(prometheus, start)
    ids = {e["labels"]["trace_id"] for e in found}
    assert all(len(i) == 32 for i in ids), ids
    # Each stored id is one the collector received (rate=10: only sampled
    # requests leave one).
    received = receiver.wait_for(
        lambda spans: ids <= {s.trace_id for s in roots(spans, "mlp-circle")}
    )
    assert ids <= {s.trace_id for s in roots(received)}
    for e in found:
        assert 0 < float(e["value"]) < 10
