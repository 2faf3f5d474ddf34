"""Every RPC of the contract against a real ``dlserve serve`` process, through
``tritonclient.grpc`` (and once through our own protobuf messages).

Outputs are compared with onnxruntime run in-process on the same file.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from devtools.inprocess import InProcessServer
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import (
    CLASSIFIER_LABELS,
    CLASSIFIER_MAX_BATCH,
    DEFAULT_MODELS,
    DEFAULT_NAMES,
    infer_input,
    model_file,
    reference,
    rows,
    rpc_error,
)

SERVICE = "inference.GRPCInferenceService"


# --- health, readiness, metadata ---------------------------------------------


def test_server_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


@pytest.mark.parametrize(
    ("name", "version", "ready"),
    [
        ("classifier", "", True),
        ("classifier", "1", True),
        ("classifier", "2", False),
        ("autocomplete", "", True),
        ("broken", "", False),
        ("no-such-model", "", False),
    ],
)
def test_model_ready(
    client: triton.InferenceServerClient, name: str, version: str, ready: bool
) -> None:
    assert client.is_model_ready(name, version) is ready


def test_server_metadata_lists_extensions(client: triton.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta.name == "dlserve"
    assert meta.version
    # The extensions this suite exercises must be announced...
    assert {
        "classification", "model_repository", "model_configuration", "statistics", "trace",
        "logging",
    } <= set(meta.extensions)  # fmt: skip
    # ...and nothing the server does not implement (sequences, CUDA shared
    # memory; system shared memory is off without --allow-client-shm:
    # test_shared_memory.py).
    assert not set(meta.extensions) & {"system_shared_memory", "cuda_shared_memory", "sequence"}


def test_model_metadata_shapes_include_batch_as_minus_one(
    client: triton.InferenceServerClient,
) -> None:
    meta = client.get_model_metadata("classifier")
    assert meta.name == "classifier"
    assert list(meta.versions) == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 2])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("logits", "FP32", [-1, 3]),
        ("probabilities", "FP32", [-1, 3]),
    ]


def test_model_metadata_of_unbatched_model_has_no_batch_dim(
    client: triton.InferenceServerClient,
) -> None:
    meta = client.get_model_metadata("fixed")
    assert [list(t.shape) for t in meta.inputs] == [[3, 2]]
    assert [list(t.shape) for t in meta.outputs] == [[3, 2], [3, 2]]


def test_model_config_dims_leave_out_batch_and_show_provider(
    client: triton.InferenceServerClient,
) -> None:
    config = client.get_model_config("classifier").config
    assert config.name == "classifier"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == CLASSIFIER_MAX_BATCH
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [2])]
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("logits", [3]),
        ("probabilities", [3]),
    ]
    assert config.output[1].label_filename == "labels.txt"
    # No GPU here: the CPU provider is in use, and says so.
    assert config.parameters["execution_provider"].string_value == "CPUExecutionProvider"
    assert [g.kind for g in config.instance_group] == [2]  # KIND_CPU


def test_model_config_completed_from_graph_when_absent(
    client: triton.InferenceServerClient,
) -> None:
    config = client.get_model_config("autocomplete").config
    assert config.name == "autocomplete"
    assert config.max_batch_size > 0
    assert config.HasField("dynamic_batching")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", 11, [2])]
    assert [o.name for o in config.output] == ["logits", "probabilities"]
    assert [list(o.dims) for o in config.output] == [[2], [2]]


# --- inference ---------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 7, CLASSIFIER_MAX_BATCH])
def test_infer_equals_onnxruntime(
    client: triton.InferenceServerClient, model_repo: Path, batch: int
) -> None:
    x = rows(batch, seed=batch)
    result = client.infer("classifier", [infer_input(x)])
    expected = reference(model_file(model_repo, "classifier"), x)
    response = result.get_response()
    assert response.model_name == "classifier"
    assert response.model_version == "1"
    assert sorted(o.name for o in response.outputs) == ["logits", "probabilities"]
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_infer_on_autocompleted_model(
    client: triton.InferenceServerClient, model_repo: Path
) -> None:
    x = rows(3, seed=11)
    result = client.infer("autocomplete", [infer_input(x)], model_version="1")
    want = reference(model_file(model_repo, "autocomplete"), x)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-6)


def test_infer_unbatched_model(client: triton.InferenceServerClient, model_repo: Path) -> None:
    x = rows(3, seed=12)
    result = client.infer("fixed", [infer_input(x)])
    want = reference(model_file(model_repo, "fixed"), x)
    np.testing.assert_allclose(result.as_numpy("logits"), want["logits"], atol=1e-6)


def test_concurrent_requests_each_get_their_own_rows(
    client: triton.InferenceServerClient, model_repo: Path
) -> None:
    """Requests in flight together may share a batch; each answer must still
    be its own rows."""
    inputs = [rows(n, seed=100 + n) for n in (1, 2, 3, 4, 5, 6)]
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for i, x in enumerate(inputs):
        client.async_infer(
            "classifier",
            [infer_input(x)],
            callback=lambda result, error, i=i: answers.put((i, result, error)),
        )
    for _ in inputs:
        i, result, error = answers.get(timeout=30)
        assert error is None, error
        want = reference(model_file(model_repo, "classifier"), inputs[i])
        np.testing.assert_allclose(result.as_numpy("logits"), want["logits"], atol=1e-6)


def test_requested_output_selection(client: triton.InferenceServerClient) -> None:
    x = rows(2, seed=3)
    result = client.infer(
        "classifier", [infer_input(x)], outputs=[triton.InferRequestedOutput("probabilities")]
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert len(response.raw_output_contents) == 1
    assert result.as_numpy("logits") is None
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, atol=1e-6)


def test_request_id_is_echoed(client: triton.InferenceServerClient) -> None:
    result = client.infer("classifier", [infer_input(rows(1))], request_id="req-42/é")
    assert result.get_response().id == "req-42/é"


def test_classification_returns_score_index_label(
    client: triton.InferenceServerClient, model_repo: Path
) -> None:
    x = rows(4, seed=5)
    result = client.infer(
        "classifier",
        [infer_input(x)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=2)],
    )
    output = result.get_output("probabilities")
    assert output.datatype == "BYTES"
    assert list(output.shape) == [4, 2]
    probabilities = reference(model_file(model_repo, "classifier"), x)["probabilities"]
    top = result.as_numpy("probabilities")
    for row, want in zip(top, probabilities, strict=True):
        order = np.argsort(-want)[:2]
        parsed = [entry.decode().split(":") for entry in row]
        assert [int(index) for _, index, _ in parsed] == list(order)
        assert [label for _, _, label in parsed] == [CLASSIFIER_LABELS[i] for i in order]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], want[order], atol=1e-5)


def test_classification_without_labels_is_score_index(
    client: triton.InferenceServerClient,
) -> None:
    result = client.infer(
        "autocomplete",
        [infer_input(rows(1))],
        outputs=[triton.InferRequestedOutput("logits", class_count=5)],
    )
    entries = [e.decode() for e in result.as_numpy("logits").reshape(-1)]
    assert len(entries) == 2  # class_count is capped at the number of classes
    assert all(len(e.split(":")) == 2 for e in entries), entries


def test_typed_fp32_contents_from_protobuf_messages(
    stub: pb_grpc.GRPCInferenceServiceStub, model_repo: Path
) -> None:
    x = rows(5, seed=7)
    request = pb.ModelInferRequest(model_name="classifier", id="typed")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[5, 2])
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    request.outputs.add(name="logits")
    response = stub.ModelInfer(request, timeout=10)
    assert response.id == "typed"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("logits", "FP32", [5, 3])
    ]
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(5, 3)
    want = reference(model_file(model_repo, "classifier"), x)["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_schedule_policy_timeout_parameter_is_honoured(
    client: triton.InferenceServerClient,
) -> None:
    """The 'delayed' model's batcher waits up to 0.5 s for company; a request
    whose schedule-policy timeout is 1 ms must be dropped (UNAVAILABLE) rather
    than run after the wait."""
    if "schedule_policy" not in client.get_server_metadata().extensions:
        return  # not claimed: nothing to honour
    with rpc_error(grpc.StatusCode.UNAVAILABLE, "delayed"):
        client.infer("delayed", [infer_input(rows(1))], timeout=1000)


def test_queue_delay_model_answers_after_waiting_for_company(
    client: triton.InferenceServerClient, model_repo: Path
) -> None:
    x = rows(3, seed=8)
    result = client.infer("delayed", [infer_input(x)])
    want = reference(model_file(model_repo, "delayed"), x)["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-6)


# --- streaming ---------------------------------------------------------------


def test_stream_infer_answers_each_request_and_survives_a_bad_one(
    server: InProcessServer, model_repo: Path
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    c = triton.InferenceServerClient(server.url)
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        good = {f"ok-{n}": rows(n, seed=n) for n in (1, 3, 5)}
        for request_id, x in list(good.items())[:2]:
            c.async_stream_infer("classifier", [infer_input(x)], request_id=request_id)
        c.async_stream_infer(
            "classifier", [infer_input(rows(2).astype(np.float64), datatype="FP64")],
            request_id="bad",
        )  # fmt: skip
        request_id, x = list(good.items())[2]
        c.async_stream_infer("classifier", [infer_input(x)], request_id=request_id)
        results, errors = {}, []
        for _ in range(4):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(error)
            else:
                results[result.get_response().id] = result
    finally:
        c.stop_stream()
        c.close()
    assert len(errors) == 1
    assert "input 'input' must be FP32, got FP64" in errors[0].message()
    assert sorted(results) == sorted(good)
    for request_id, x in good.items():
        want = reference(model_file(model_repo, "classifier"), x)
        np.testing.assert_allclose(
            results[request_id].as_numpy("logits"), want["logits"], atol=1e-6
        )


# --- statistics and repository --------------------------------------------------


def _stats(client: triton.InferenceServerClient, name: str) -> Any:
    (stats,) = client.get_inference_statistics(name).model_stats
    return stats


def test_inference_statistics_count_real_requests(client: triton.InferenceServerClient) -> None:
    before = _stats(client, "counted")
    for n in (1, 2, 3, 4):
        client.infer("counted", [infer_input(rows(n))])
    after = _stats(client, "counted")
    assert (after.name, after.version) == ("counted", "1")
    assert after.inference_count - before.inference_count == 10  # rows
    success = after.inference_stats.success
    assert success.count - before.inference_stats.success.count == 4  # requests
    assert success.ns > before.inference_stats.success.ns
    assert after.inference_stats.compute_infer.ns > 0
    assert 1 <= after.execution_count - before.execution_count <= 4
    assert after.last_inference >= int(time.time() * 1000) - 60_000
    assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count


def test_inference_statistics_accept_any_spelling_of_a_version(
    client: triton.InferenceServerClient,
) -> None:
    client.infer("counted", [infer_input(rows(1))])
    plain = client.get_inference_statistics("counted", "1").model_stats
    padded = client.get_inference_statistics("counted", "01").model_stats
    assert [s.version for s in padded] == ["1"]
    assert padded[0].inference_count >= plain[0].inference_count >= 1


def test_inference_statistics_of_all_models(client: triton.InferenceServerClient) -> None:
    names = {s.name for s in client.get_inference_statistics().model_stats}
    assert {"classifier", "autocomplete", "counted", "fixed"} <= names
    with rpc_error(grpc.StatusCode.NOT_FOUND, "no-such-model"):
        client.get_inference_statistics("no-such-model")


def test_repository_index_has_state_and_reason(client: triton.InferenceServerClient) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert set(index) == {"classifier", "autocomplete", "counted", "fixed", "delayed", "broken"}
    for name in ("classifier", "autocomplete", "counted", "fixed", "delayed"):
        assert (index[name].version, index[name].state, index[name].reason) == ("1", "READY", "")
    assert index["broken"].state == "UNAVAILABLE"
    assert "model.onnx" in index["broken"].reason
    assert "Protobuf parsing failed" in index["broken"].reason


def test_load_and_unload_refused_without_explicit_mode(
    client: triton.InferenceServerClient,
) -> None:
    with rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "--model-control-mode explicit"):
        client.load_model("classifier")
    with rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "--model-control-mode explicit"):
        client.unload_model("classifier")
    assert client.is_model_ready("classifier")


# --- the standard gRPC services -------------------------------------------------


@pytest.mark.parametrize("service", ["", SERVICE])
def test_grpc_health_check(server: InProcessServer, service: str) -> None:
    with grpc.insecure_channel(server.url) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_inference_service(server: InProcessServer) -> None:
    with grpc.insecure_channel(server.url) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        file = db.FindFileContainingSymbol(SERVICE)
    (service,) = [s for s in file.service if f"{file.package}.{s.name}" == SERVICE]
    methods = {m.name for m in service.method}
    assert {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelConfig", "ModelInfer", "ModelStreamInfer", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    } <= methods  # fmt: skip


def test_device_cuda_that_cannot_be_honoured_fails_each_load_with_the_reason(
    model_repo: Path,
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: --device cuda can be honoured here")
    with InProcessServer(model_repo, "--device", "cuda") as proc:
        c = triton.InferenceServerClient(proc.url)
        assert c.is_server_live()
        index = c.get_model_repository_index().models
        c.close()
    assert index and all(m.state == "UNAVAILABLE" for m in index)
    for m in index:
        if m.name != "broken":
            assert "--device cuda cannot be honoured" in m.reason, m
            assert "CUDAExecutionProvider" in m.reason


# --- explicit model control ----------------------------------------------------


@pytest.fixture(scope="module")
def explicit(model_repo: Path) -> Iterator[triton.InferenceServerClient]:
    with InProcessServer(model_repo, "--model-control-mode", "explicit") as proc:
        c = triton.InferenceServerClient(proc.url)
        yield c
        c.close()


def test_explicit_mode_starts_with_nothing_loaded(explicit: triton.InferenceServerClient) -> None:
    assert explicit.is_server_ready()
    for name in ("classifier", "autocomplete", "broken"):
        assert not explicit.is_model_ready(name)


def test_explicit_mode_index_lists_models_not_loaded(
    explicit: triton.InferenceServerClient,
) -> None:
    names = {m.name for m in explicit.get_model_repository_index().models}
    assert {"classifier", "autocomplete", "counted", "fixed", "broken"} <= names


def test_explicit_mode_load_model_flag_loads_only_those(model_repo: Path) -> None:
    with InProcessServer(
        model_repo, "--model-control-mode", "explicit", "--load-model", "classifier"
    ) as proc:
        c = triton.InferenceServerClient(proc.url)
        assert c.is_model_ready("classifier")
        assert not c.is_model_ready("autocomplete")


def test_explicit_load_then_unload(
    explicit: triton.InferenceServerClient, model_repo: Path
) -> None:
    x = rows(2, seed=21)
    want = reference(model_file(model_repo, "autocomplete"), x)["logits"]

    explicit.load_model("classifier")
    explicit.load_model("autocomplete")
    assert explicit.is_model_ready("autocomplete")
    np.testing.assert_allclose(
        explicit.infer("autocomplete", [infer_input(x)]).as_numpy("logits"), want, atol=1e-6
    )
    index = {m.name: m for m in explicit.get_model_repository_index().models}
    assert index["autocomplete"].state == "READY"

    explicit.unload_model("autocomplete")
    assert not explicit.is_model_ready("autocomplete")
    with rpc_error(grpc.StatusCode.UNAVAILABLE, "autocomplete", "unloaded"):
        explicit.infer("autocomplete", [infer_input(x)])
    index = {m.name: m for m in explicit.get_model_repository_index().models}
    assert (index["autocomplete"].state, index["autocomplete"].reason) == (
        "UNAVAILABLE", "unloaded",
    )  # fmt: skip

    explicit.load_model("autocomplete")  # and back again
    np.testing.assert_allclose(
        explicit.infer("autocomplete", [infer_input(x)]).as_numpy("logits"), want, atol=1e-6
    )
    assert explicit.is_model_ready("classifier")  # untouched throughout


def test_explicit_load_of_broken_model_reports_why(explicit: triton.InferenceServerClient) -> None:
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "broken", "model.onnx"):
        explicit.load_model("broken")
    assert not explicit.is_model_ready("broken")
    index = {m.name: m for m in explicit.get_model_repository_index().models}
    assert index["broken"].state == "UNAVAILABLE"
    assert "Protobuf parsing failed" in index["broken"].reason


def test_explicit_load_with_config_override_is_refused(
    explicit: triton.InferenceServerClient,
) -> None:
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "not supported"):
        explicit.load_model("fixed", config='{"max_batch_size": 2}')
    assert not explicit.is_model_ready("fixed")


def test_explicit_load_of_unknown_model_is_not_found(
    explicit: triton.InferenceServerClient,
) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND, "no-such-model"):
        explicit.load_model("no-such-model")
    with rpc_error(grpc.StatusCode.NOT_FOUND, "../classifier"):
        explicit.load_model("../classifier")


# --- the five default models (models/, committed) ---------------------------------------


@pytest.fixture(scope="module")
def defaults(default_server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(default_server.url)
    yield c
    c.close()


def _default_input(name: str, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "digits-cnn":  # 8x8 images, pixel values 0..16 as in scikit-learn's set
        return rng.uniform(0, 16, (batch, 1, 8, 8)).astype(np.float32)
    return rng.uniform(-1.5, 1.5, (batch, 2)).astype(np.float32)


def test_default_models_are_ready_with_the_contract_signature(
    defaults: triton.InferenceServerClient,
) -> None:
    index = {m.name: m.state for m in defaults.get_model_repository_index().models}
    assert index == dict.fromkeys(DEFAULT_NAMES, "READY")
    for name in DEFAULT_NAMES:
        meta = defaults.get_model_metadata(name)
        labels = (DEFAULT_MODELS / name / "labels.txt").read_text().split()
        features = [-1, 1, 8, 8] if name == "digits-cnn" else [-1, 2]
        assert [(i.name, i.datatype, list(i.shape)) for i in meta.inputs] == [
            ("input", "FP32", features)
        ]
        assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [
            ("logits", "FP32", [-1, len(labels)]),
            ("probabilities", "FP32", [-1, len(labels)]),
        ]


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_default_models_equal_onnxruntime(
    defaults: triton.InferenceServerClient, name: str
) -> None:
    max_batch = defaults.get_model_config(name).config.max_batch_size
    for batch in (1, 7, max_batch):
        x = _default_input(name, batch, seed=batch)
        result = defaults.infer(name, [infer_input(x)])
        want = reference(DEFAULT_MODELS / name / "1" / "model.onnx", x)
        for output, expected in want.items():
            np.testing.assert_allclose(result.as_numpy(output), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_default_models_classify_with_their_labels(
    defaults: triton.InferenceServerClient, name: str
) -> None:
    labels = (DEFAULT_MODELS / name / "labels.txt").read_text().split()
    x = _default_input(name, 3, seed=5)
    result = defaults.infer(
        name, [infer_input(x)], outputs=[triton.InferRequestedOutput("probabilities", 2)]
    )
    probabilities = reference(DEFAULT_MODELS / name / "1" / "model.onnx", x)["probabilities"]
    for row, want in zip(result.as_numpy("probabilities"), probabilities, strict=True):
        top = [int(entry.decode().split(":")[1]) for entry in row]
        assert top == list(np.argsort(-want, kind="stable")[:2])
        assert [entry.decode().split(":")[2] for entry in row] == [labels[i] for i in top]
