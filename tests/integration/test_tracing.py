"""OpenTelemetry traces end to end: a real dlserve (``--trace-config`` in
Triton's spelling) exports over OTLP/HTTP to a real receiver in the test
(tests/integration/otlp_receiver.py, decoding with opentelemetry-proto);
clients are tritonclient (gRPC unary and stream, HTTP) and raw HTTP.

What must hold: one ``infer`` span per traced request with ``queue``,
``batch`` (-> ``compute``) and ``encode`` children, the attributes the
issue lists, the client's W3C ``traceparent`` as parent, the batch span
linking the other requests of its batch, failures traced with their status
code, Triton's TraceSetting changing rate, count and level at run time,
and the trace id as an exemplar of the latency histogram in OpenMetrics.
"""

from __future__ import annotations

import json
import queue
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from devtools.inprocess import InProcessServer
from devtools.onnx_models import config_text, mlp, write_model
from tests.integration.http_helpers import Http, error_of
from tests.integration.otlp_receiver import OtlpReceiver, Span, roots, traces

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
BATCH = 4


def trace_flags(url: str, *more: str) -> list[str]:
    flags = ["level=TIMESTAMPS", "rate=1", f"opentelemetry,url={url}",
             "opentelemetry,bsp_schedule_delay=20", "opentelemetry,resource=test.run=tracing",
             *more]  # fmt: skip
    return [arg for flag in flags for arg in ("--trace-config", flag)]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "plain", model=mlp(seed=1))
    write_model(repo, "marker", model=mlp(seed=2))
    write_model(repo, "counted", model=mlp(seed=3))
    write_model(repo, "quiet", model=mlp(seed=5))
    # Waits (up to 30 s) until BATCH rows are queued: BATCH concurrent
    # requests always form one batch.
    batched = config_text("batched", max_batch_size=BATCH, dynamic_batching=False) + (
        f"dynamic_batching {{ preferred_batch_size: [ {BATCH} ] "
        "max_queue_delay_microseconds: 30000000 }\n"
    )
    write_model(repo, "batched", model=mlp(seed=4), config=batched)
    return repo


@pytest.fixture(scope="module")
def server(repo: Path, receiver: OtlpReceiver) -> Iterator[InProcessServer]:
    with InProcessServer(repo, *trace_flags(receiver.url)) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: InProcessServer) -> Iterator[triton_http.InferenceServerClient]:
    c = triton_http.InferenceServerClient(server.http_url)
    yield c
    c.close()


@pytest.fixture
def client(server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url)
    yield c
    c.update_trace_settings(settings={"trace_level": None, "trace_rate": None, "trace_count": None})
    for model in ("plain", "counted", "quiet"):
        c.update_trace_settings(model, {"trace_level": None, "trace_rate": None,
                                        "trace_count": None})  # fmt: skip
    c.close()


def inputs(rows: int = 1, features: int = 2) -> list[triton.InferInput]:
    x = triton.InferInput("input", [rows, features], "FP32")
    x.set_data_from_numpy(np.ones((rows, features), np.float32))
    return [x]


def barrier(client: triton.InferenceServerClient, receiver: OtlpReceiver) -> list[Span]:
    """Every span of the requests sent so far: a request to ``marker`` is
    answered and exported after them (one processor queue, one export
    thread, in order), so once its trace arrived, theirs have."""
    before = {s.trace_id for s in roots(receiver.snapshot(), "marker")}
    client.infer("marker", inputs())
    receiver.wait_for(lambda spans: bool({s.trace_id for s in roots(spans, "marker")} - before))
    return receiver.snapshot()


def tree(spans: list[Span], trace_id: str) -> dict[str, Span]:
    """A traced request's spans by name (each name once)."""
    mine = traces(spans)[trace_id]
    by_name = {s.name: s for s in mine}
    assert len(by_name) == len(mine), [s.name for s in mine]
    return by_name


def check_tree(spans: dict[str, Span], transport: str, model: str, rows: int = 1) -> None:
    root = spans["infer"]
    assert set(spans) == {"infer", "queue", "batch", "compute", "encode"}
    for name in ("queue", "batch", "encode"):
        assert spans[name].parent_id == root.span_id, name
    assert spans["compute"].parent_id == spans["batch"].span_id
    assert root.kind == 2  # SPAN_KIND_SERVER
    attrs = root.attributes
    assert attrs["dlserve.model"] == model and attrs["dlserve.version"] == "1"
    assert attrs["dlserve.transport"] == transport
    assert attrs["dlserve.rows"] == rows and attrs["dlserve.batch.rows"] >= rows
    assert attrs["dlserve.status_code"] == "OK" and root.status_code != 2
    assert root.resource["service.name"] == "dlserve"
    assert root.resource["test.run"] == "tracing"
    # Children lie inside the request and in order: queue, batch, encode.
    for name in ("queue", "batch", "compute", "encode"):
        child = spans[name]
        assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns, name
    assert spans["queue"].end_ns <= spans["batch"].start_ns <= spans["compute"].start_ns
    assert spans["compute"].end_ns <= spans["batch"].end_ns <= spans["encode"].start_ns


def test_grpc_request_span_tree(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    result = client.infer("plain", inputs(3), request_id="r1")
    assert result.as_numpy("probabilities").shape == (3, 2)
    spans = barrier(client, receiver)
    (root,) = [s for s in roots(spans, "plain") if s.attributes["dlserve.rows"] == 3]
    assert root.parent_id == ""  # no traceparent: a trace of its own
    check_tree(tree(spans, root.trace_id), "grpc", "plain", rows=3)


def test_client_traceparent_becomes_the_parent(
    client: triton.InferenceServerClient,
    receiver: OtlpReceiver,
    http: triton_http.InferenceServerClient,
) -> None:
    client.infer("plain", inputs(), headers={"traceparent": TRACEPARENT})
    spans = barrier(client, receiver)
    (root,) = [s for s in roots(spans) if s.trace_id == TRACE_ID]
    assert root.parent_id == PARENT_ID
    check_tree(tree(spans, TRACE_ID), "grpc", "plain")
    # The same over REST, with tritonclient.http.
    other = "0af7651916cd43dd8448eb211c80319c"
    x = triton_http.InferInput("input", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    http.infer("plain", [x], headers={"traceparent": f"00-{other}-b7ad6b7169203331-01"})
    spans = barrier(client, receiver)
    (root,) = [s for s in roots(spans) if s.trace_id == other]
    assert root.parent_id == "b7ad6b7169203331"
    check_tree(tree(spans, other), "http", "plain")


def test_malformed_traceparent_starts_a_new_trace(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    before = {s.trace_id for s in roots(receiver.snapshot(), "plain")}
    client.infer("plain", inputs(), headers={"traceparent": "00-not-a-trace-01"})
    spans = barrier(client, receiver)
    (root,) = [s for s in roots(spans, "plain") if s.trace_id not in before]
    assert root.parent_id == ""
    check_tree(tree(spans, root.trace_id), "grpc", "plain")


def test_stream_requests_are_traced(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error or result),
                        headers={"traceparent": TRACEPARENT})  # fmt: skip
    try:
        for i in range(3):
            client.async_stream_infer("plain", inputs(), request_id=f"s{i}")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
    assert not [g for g in got if isinstance(g, Exception)], got
    spans = barrier(client, receiver)
    streamed = [s for s in roots(spans) if s.attributes["dlserve.transport"] == "grpc_stream"]
    assert len(streamed) == 3
    for root in streamed:  # each request its own span, under the stream's traceparent
        assert root.trace_id == TRACE_ID and root.parent_id == PARENT_ID
    assert len({r.span_id for r in streamed}) == 3
    by_parent = [s for s in traces(spans)[TRACE_ID] if s.parent_id in {r.span_id for r in streamed}]
    assert sorted(s.name for s in by_parent) == sorted(["batch", "encode", "queue"] * 3)


def test_batch_span_links_every_request_of_its_batch(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    done: queue.Queue[Any] = queue.Queue()
    for _ in range(BATCH):
        client.async_infer("batched", inputs(), lambda result, error: done.put(error or result))
    got = [done.get(timeout=60) for _ in range(BATCH)]
    assert not [g for g in got if isinstance(g, Exception)], got
    spans = barrier(client, receiver)
    requests = roots(spans, "batched")
    assert len(requests) == BATCH
    ids = {(r.trace_id, r.span_id) for r in requests}
    for root in requests:
        assert root.attributes["dlserve.batch.rows"] == BATCH
        batch = tree(spans, root.trace_id)["batch"]
        assert set(batch.links) == ids - {(root.trace_id, root.span_id)}
        assert batch.attributes["dlserve.batch.traced_requests"] == BATCH


def test_failed_requests_are_traced_with_their_status(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    with pytest.raises(InferenceServerException):
        client.infer("plain", inputs(features=3))  # wrong shape
    spans = barrier(client, receiver)
    failed = [s for s in roots(spans, "plain") if s.attributes["dlserve.status_code"] != "OK"]
    (root,) = failed
    assert root.attributes["dlserve.status_code"] == "INVALID_ARGUMENT"
    assert root.status_code == 2 and "input" in root.status_message  # STATUS_CODE_ERROR
    assert [s.name for s in traces(spans)[root.trace_id]] == ["infer"]


def test_update_trace_settings_changes_the_rate_at_run_time(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    answer = client.update_trace_settings("plain", {"trace_rate": "3"}, as_json=True)
    assert answer["settings"]["trace_rate"]["value"] == ["3"]
    # Only the model's own rate changed.
    assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1"]
    before = len(roots(barrier(client, receiver), "plain"))
    for _ in range(9):
        client.infer("plain", inputs())
    assert len(roots(barrier(client, receiver), "plain")) - before == 3  # 1 in 3
    # Cleared: the model falls back to the global rate (1).
    answer = client.update_trace_settings("plain", {"trace_rate": None}, as_json=True)
    assert answer["settings"]["trace_rate"]["value"] == ["1"]
    for _ in range(4):
        client.infer("plain", inputs())
    assert len(roots(barrier(client, receiver), "plain")) - before == 7


def test_trace_count_and_level_at_run_time(
    client: triton.InferenceServerClient, receiver: OtlpReceiver
) -> None:
    client.update_trace_settings("counted", {"trace_count": "2"})
    for _ in range(5):
        client.infer("counted", inputs())
    assert len(roots(barrier(client, receiver), "counted")) == 2
    left = client.get_trace_settings("counted", as_json=True)["settings"]["trace_count"]
    assert left["value"] == ["0"]
    # Level OFF globally: nothing is traced, not even the marker.
    client.update_trace_settings(settings={"trace_level": ["OFF"]})
    before = len(receiver.snapshot())
    for _ in range(3):
        client.infer("plain", inputs())
    # Back on: the requests sent while it was off never show up.
    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
    spans = barrier(client, receiver)
    assert len(spans) - before == 5  # the marker's five spans only


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"trace_level": ["TENSORS"]}, "TENSORS"),
        ({"trace_rate": "0"}, ">= 1"),
        ({"trace_rate": "often"}, "whole number"),
        ({"trace_count": "-2"}, "-1"),
        ({"trace_file": "/tmp/t.json"}, "OpenTelemetry"),
        ({"trace_mode": "triton"}, "opentelemetry"),
        ({"no_such": "1"}, "unknown trace setting"),
    ],
)
def test_bad_trace_settings_are_refused(
    client: triton.InferenceServerClient, settings: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.update_trace_settings(settings=settings)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert fragment in info.value.message()
    assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1"]


def test_trace_settings_of_an_unknown_model(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_trace_settings("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_trace_settings_over_http(http: triton_http.InferenceServerClient) -> None:
    got = http.update_trace_settings("plain", {"trace_rate": "5", "trace_count": "7"})
    assert got["trace_rate"] == "5" and got["trace_count"] == "7"
    assert got["trace_level"] == ["TIMESTAMPS"] and got["trace_mode"] == "opentelemetry"
    assert http.get_trace_settings("plain")["trace_rate"] == "5"
    assert http.get_trace_settings()["trace_rate"] == "1"
    cleared = http.update_trace_settings("plain", {"trace_rate": None, "trace_count": None})
    assert cleared["trace_rate"] == "1" and cleared["trace_count"] == "-1"
    with pytest.raises(InferenceServerException) as info:
        http.update_trace_settings(settings={"trace_rate": {"x": 1}})
    assert "string" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        http.get_trace_settings("nope")
    assert "not in the repository" in info.value.message()


def test_trace_id_is_an_exemplar_in_openmetrics(
    client: triton.InferenceServerClient, receiver: OtlpReceiver, server: InProcessServer
) -> None:
    client.infer("plain", inputs(), headers={"traceparent": TRACEPARENT})
    request = urllib.request.Request(
        f"{server.metrics_url}/metrics", headers={"Accept": OPENMETRICS}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
        body = reply.read().decode()
    assert body.rstrip().endswith("# EOF")
    buckets = [line for line in body.splitlines()
               if line.startswith("dlserve_request_duration_seconds_bucket") and " # " in line
               and 'model="plain"' in line]  # fmt: skip
    assert any(f'trace_id="{TRACE_ID}"' in line for line in buckets), buckets
    # The plain text format has no exemplars.
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert "trace_id" not in text and "dlserve_request_duration_seconds_bucket" in text


def test_exemplars_only_for_traced_requests(
    client: triton.InferenceServerClient, receiver: OtlpReceiver, server: InProcessServer
) -> None:
    def exemplar_ids() -> set[str]:
        request = urllib.request.Request(
            f"{server.metrics_url}/metrics", headers={"Accept": OPENMETRICS}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            lines = reply.read().decode().splitlines()
        quiet = [line for line in lines if line.startswith("dlserve_request_duration_seconds")
                 and 'model="quiet"' in line]  # fmt: skip
        assert quiet, "no latency series for the model"
        return {line.split('trace_id="')[1][:32] for line in quiet if "trace_id" in line}

    client.update_trace_settings("quiet", {"trace_level": ["OFF"]})
    for _ in range(3):
        client.infer("quiet", inputs())
    assert exemplar_ids() == set()
    client.update_trace_settings("quiet", {"trace_level": ["TIMESTAMPS"]})
    client.infer("quiet", inputs())
    (root,) = roots(barrier(client, receiver), "quiet")
    assert exemplar_ids() == {root.trace_id}


def test_without_trace_config_tracing_is_off_until_switched_on(repo: Path) -> None:
    """No --trace-config: the settings API answers (level OFF, Triton's
    defaults), the SDK is not loaded, and tracing can be switched on at run
    time (to a collector that is not there: requests are unaffected)."""
    with InProcessServer(repo) as plain:
        tracing = plain.app.service.tracing
        c = triton.InferenceServerClient(plain.url)
        try:
            got = c.get_trace_settings(as_json=True)["settings"]
            assert got["trace_level"]["value"] == ["OFF"]
            assert got["trace_rate"]["value"] == ["1000"]
            assert tracing.on is False and tracing._pipeline is None
            c.infer("plain", inputs())
            c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
            assert tracing.on is True
            for _ in range(5):
                c.infer("plain", inputs())
        finally:
            c.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("DELETE", "/v2/trace/setting", None, 405, "GET or POST"),
        ("PUT", "/v2/logging", "{}", 405, "GET or POST"),
        ("POST", "/v2/trace/setting", "{not json", 400, "JSON"),
        ("POST", "/v2/logging", '{"log_info": [1]}', 400, "boolean"),
        ("POST", "/v2/models/plain/trace/setting", '{"trace_level": "LOUD"}', 400, "TIMESTAMPS"),
        ("GET", "/v2/models/nope/trace/setting", None, 404, "nope"),
        ("GET", "/v2/models/plain/versions/1/trace/setting", None, 404, "no such path"),
    ],
)  # fmt: skip
def test_settings_routes_answer_bad_requests_with_json_errors(
    server: InProcessServer, method: str, path: str, body: str | None, status: int, fragment: str
) -> None:
    api = Http(server.http_url)
    try:
        got, headers, data = api.request(method, path, body)
        assert got == status, data
        assert fragment in error_of(got, headers, data)
        if status == 405:
            assert headers["allow"] == "GET, POST"
        # The server goes on answering, settings unchanged.
        got, _, data = api.request("GET", "/v2/trace/setting", None)
        assert got == 200 and json.loads(data)["trace_rate"] == "1"
    finally:
        api.close()
