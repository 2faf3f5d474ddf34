"""/metrics of a real `dlserve serve`: after N good and M bad requests the
counters rose by exactly N (code OK) and M (their codes), the histograms
counted the N, and readiness names the execution provider."""

from __future__ import annotations

import queue
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from tests.integration.loadgen import good_input

Labels = tuple[tuple[str, str], ...]


def scrape(server: InProcessServer) -> "Scrape":
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def labels(**values: str) -> Labels:
    return tuple(sorted(values.items()))


def key(name: str, **values: str) -> tuple[str, Labels]:
    return name, labels(**values)


Scrape = dict[tuple[str, Labels], float]


def deltas(before: Scrape, after: Scrape, name: str) -> dict[Labels, float]:
    """Non-zero changes of the samples called ``name``."""
    return {
        found: value - before.get((sample, found), 0.0)
        for (sample, found), value in after.items()
        if sample == name and value != before.get((sample, found), 0.0)
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "mlp", model=mlp(features=2, hidden=(8, 8), classes=2))
    write_model(root, "wide", model=mlp(features=5, hidden=(4,), classes=3, seed=1))
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repo) as running:
        yield running


def expect_status(call: object, status: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()  # type: ignore[operator]
    assert info.value.status() == f"StatusCode.{status}", info.value


def test_counter_deltas_are_exact(server: InProcessServer) -> None:
    client = grpcclient.InferenceServerClient(server.url)
    before = scrape(server)

    # N good requests, unary and streamed, of 1..4 rows each.
    rows = [1 + i % 4 for i in range(20)]
    for i, n in enumerate(rows[:16]):
        client.infer("mlp", [good_input(2, n, seed=i)])
    results: queue.Queue[object] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put(error or result))
    for i, n in enumerate(rows[16:]):
        client.async_stream_infer("mlp", [good_input(2, n, seed=100 + i)])
    # ... and one bad request on the stream (wrong feature count).
    client.async_stream_infer("mlp", [good_input(3, 1)])
    replies = [results.get(timeout=30) for _ in range(5)]
    client.stop_stream()
    assert sum(isinstance(r, InferenceServerException) for r in replies) == 1
    n_good = len(rows)

    # M bad requests with various codes.
    wrong_dtype = grpcclient.InferInput("input", [1, 2], "FP64")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 2), np.float64))
    wrong_name = grpcclient.InferInput("features", [1, 2], "FP32")
    wrong_name.set_data_from_numpy(np.zeros((1, 2), np.float32))
    bad = [
        (lambda: client.infer("mlp", [good_input(3, 1)]), "INVALID_ARGUMENT"),  # shape
        (lambda: client.infer("mlp", [wrong_dtype]), "INVALID_ARGUMENT"),
        (lambda: client.infer("mlp", [wrong_name]), "INVALID_ARGUMENT"),
        (lambda: client.infer("mlp", [good_input(2, 65)]), "INVALID_ARGUMENT"),  # > max batch
        (lambda: client.infer("mlp", [good_input(2, 1)], model_version="7"), "NOT_FOUND"),
        (lambda: client.infer("mlp", [good_input(2, 1)], model_version="7"), "NOT_FOUND"),
        (lambda: client.infer("nope", [good_input(2, 1)]), "NOT_FOUND"),
        (lambda: client.infer("nope", [good_input(2, 1)]), "NOT_FOUND"),
        (lambda: client.infer("nope", [good_input(2, 1)]), "NOT_FOUND"),
    ]
    for call, status in bad:
        expect_status(call, status)
    client.close()

    after = scrape(server)
    requests = deltas(before, after, "dlserve_requests_total")
    assert requests == {
        labels(model="mlp", version="1", code="OK"): n_good,
        labels(model="mlp", version="1", code="INVALID_ARGUMENT"): 5,  # 4 unary + 1 stream
        # A version the model does not have: labelled with the model, no version.
        labels(model="mlp", version="", code="NOT_FOUND"): 2,
        # Unknown model names are not labels (bounded cardinality).
        labels(model="", version="", code="NOT_FOUND"): 3,
    }
    assert sum(requests.values()) == n_good + len(bad) + 1

    mlp1 = {"model": "mlp", "version": "1"}
    for family in ("request", "queue", "compute"):
        name = f"dlserve_{family}_duration_seconds_count"
        assert deltas(before, after, name) == {labels(**mlp1): n_good}, name
        assert after[key(f"dlserve_{family}_duration_seconds_sum", **mlp1)] > before.get(
            key(f"dlserve_{family}_duration_seconds_sum", **mlp1), 0.0
        )
    # One batch-size observation per onnxruntime run; together they carry every row.
    assert deltas(before, after, "dlserve_batch_size_sum") == {labels(**mlp1): sum(rows)}
    runs = deltas(before, after, "dlserve_batch_size_count")[labels(**mlp1)]
    assert 1 <= runs <= n_good
    # Latencies are in seconds: every request took less than the top bucket.
    inf = key("dlserve_request_duration_seconds_bucket", **mlp1, le="+Inf")
    below_10s = key("dlserve_request_duration_seconds_bucket", **mlp1, le="10.0")
    assert after[inf] == after[below_10s]
    assert after[key("dlserve_inflight_requests", model="mlp")] == 0


def test_model_ready_names_the_execution_provider(server: InProcessServer) -> None:
    after = scrape(server)
    ready = {labels: v for (name, labels), v in after.items() if name == "dlserve_model_ready"}
    assert ready == {
        labels(model="mlp", provider="CPUExecutionProvider", version="1"): 1.0,
        labels(model="wide", provider="CPUExecutionProvider", version="1"): 1.0,
    }


def test_no_metrics_records_no_traffic_but_readiness(repo: Path) -> None:
    with InProcessServer(repo, "--no-metrics") as server:
        client = grpcclient.InferenceServerClient(server.url)
        for i in range(5):
            client.infer("mlp", [good_input(2, 1, seed=i)])
        expect_status(lambda: client.infer("nope", [good_input(2, 1)]), "NOT_FOUND")
        client.close()
        after = scrape(server)
    traffic = ("dlserve_request", "dlserve_queue", "dlserve_compute", "dlserve_batch")
    assert not [name for name, _ in after if name.startswith(traffic)]
    ready = key("dlserve_model_ready", model="mlp", provider="CPUExecutionProvider", version="1")
    assert after[ready] == 1
