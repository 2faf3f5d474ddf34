"""Ensembles (issue 13 item 5) end to end: a real server on a Triton-layout
folder (tests/integration/helpers_ensembles.py), real tritonclient gRPC
(unary and stream) and HTTP clients; answers equal to running the step
graphs in onnxruntime; broken ensembles not ready with their reason; an
ensemble's readiness follows its step models (explicit model control)."""

from __future__ import annotations

import queue
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http

from devtools.ensembles import ensemble_config, step_text, write_ensemble
from devtools.onnx_models import mlp, slow_mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import (
    DEFAULT_MODELS,
    infer_input,
    inflight,
    outputs,
    reference,
    request,
    rows,
    rpc_error,
)
from tests.integration.helpers_ensembles import (
    BROKEN,
    LABELS,
    build_ensemble_repo,
    diamond_reference,
    pipeline_reference,
    reference_of,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ensemble_repo(tmp_path_factory.mktemp("ensembles"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "*") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url)
    yield c
    c.close()


def test_pipeline_over_grpc_equals_the_two_sessions_in_sequence(
    client: triton.InferenceServerClient, repo: Path
) -> None:
    x = rows(7, seed=1)
    answer = client.infer("pipeline", [infer_input(x)])
    want = pipeline_reference(repo, x)
    for name in ("logits", "probabilities"):
        np.testing.assert_allclose(answer.as_numpy(name), want[name], rtol=1e-5, atol=1e-6)
    # the standardiser matters: the classifier alone answers otherwise
    alone = client.infer("classifier", [infer_input(x)]).as_numpy("logits")
    assert not np.allclose(alone, want["logits"])


def test_pipeline_over_http_with_classification(server: ServerProcess, repo: Path) -> None:
    c = triton_http.InferenceServerClient(server.http_url)
    x = rows(4, seed=2)
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    wanted = [triton_http.InferRequestedOutput("probabilities", class_count=1)]
    answer = c.infer("pipeline", [tensor], outputs=wanted).as_numpy("probabilities")
    probabilities = pipeline_reference(repo, x)["probabilities"]
    top = [LABELS[i] for i in probabilities.argmax(axis=1)]
    assert [s.decode().split(":")[2] for s in answer.reshape(-1)] == top
    steps = c.get_model_config("pipeline")["ensemble_scheduling"]["step"]
    assert [(s["model_name"], s["input_map"]) for s in steps] == [
        ("standardiser", {"raw": "input"}), ("classifier", {"input": "scaled"})
    ]  # fmt: skip
    assert c.get_model_metadata("pipeline")["platform"] == "ensemble"
    c.close()


def test_dag_with_parallel_steps_over_the_stream(server: ServerProcess, repo: Path) -> None:
    results: queue.Queue[object] = queue.Queue()
    c = triton.InferenceServerClient(server.url)
    c.start_stream(callback=lambda result, error: results.put(error or result))
    inputs = [rows(3, seed=s) for s in range(5)]
    for i, x in enumerate(inputs):
        c.async_stream_infer("diamond", [infer_input(x)], request_id=str(i))
    answers = {}
    for _ in inputs:
        result = results.get(timeout=30)
        assert isinstance(result, triton.InferResult), result
        answers[int(result.get_response().id)] = result
    c.stop_stream()
    c.close()
    for i, x in enumerate(inputs):
        want = diamond_reference(repo, x)
        for name, array in want.items():
            np.testing.assert_allclose(answers[i].as_numpy(name), array, rtol=1e-5, atol=1e-6)


def test_metadata_config_and_statistics(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata("pipeline")
    assert metadata.platform == "ensemble"
    assert [(i.name, list(i.shape)) for i in metadata.inputs] == [("input", [-1, 2])]
    config = client.get_model_config("pipeline").config
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["standardiser", "classifier"]
    before = client.get_inference_statistics("standardiser").model_stats[0].inference_stats
    ens_before = client.get_inference_statistics("pipeline").model_stats[0].inference_stats
    client.infer("pipeline", [infer_input(rows(2))])
    after = client.get_inference_statistics("standardiser").model_stats[0].inference_stats
    ens_after = client.get_inference_statistics("pipeline").model_stats[0].inference_stats
    assert after.success.count == before.success.count + 1  # the step counts in its model
    assert ens_after.success.count == ens_before.success.count + 1


def test_bad_request_to_an_ensemble_is_invalid_argument(
    client: triton.InferenceServerClient,
) -> None:
    with rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "expected [-1, 2]"):
        client.infer("pipeline", [infer_input(rows(2, features=3))])
    assert client.is_model_ready("pipeline")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_ensemble_is_not_ready_with_its_reason(
    client: triton.InferenceServerClient, name: str
) -> None:
    assert not client.is_model_ready(name)
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index[name].state == "UNAVAILABLE"
    assert BROKEN[name] in index[name].reason
    with rpc_error(grpc.StatusCode.UNAVAILABLE, BROKEN[name]):
        client.infer(name, [infer_input(rows(1))])
    assert client.is_model_ready("pipeline")  # the others serve


def model_ready_gauge(server: ServerProcess, model: str) -> str:
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
    return "".join(
        line.rsplit(" ", 1)[1] for line in text.splitlines()
        if line.startswith(f'dlserve_model_ready{{model="{model}"')
    )  # fmt: skip


def test_readiness_follows_the_step_models(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    assert model_ready_gauge(server, "pipeline") == "1.0"
    assert model_ready_gauge(server, "bad_map") == "0.0"
    client.unload_model("standardiser")
    try:
        assert not client.is_model_ready("pipeline")
        assert model_ready_gauge(server, "pipeline") == "0.0"
        assert not client.is_model_ready("diamond")
        with rpc_error(grpc.StatusCode.UNAVAILABLE, "step model 'standardiser' is not ready"):
            client.infer("pipeline", [infer_input(rows(1))])
        assert client.is_model_ready("classifier")
    finally:
        client.load_model("standardiser")
    assert client.is_model_ready("pipeline")
    assert model_ready_gauge(server, "pipeline") == "1.0"
    client.infer("pipeline", [infer_input(rows(1))])


def test_the_example_script_builds_a_serving_pipeline(tmp_path: Path) -> None:
    """scripts/make_ensemble_example.py next to the committed mlp-circle: the
    pipeline answers what mlp-circle answers on the standardised points."""
    shutil.copytree(DEFAULT_MODELS / "mlp-circle", tmp_path / "mlp-circle")
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_ensemble_example.py"
    subprocess.run(
        [sys.executable, str(script), "--repository", str(tmp_path), "--classifier",
         "mlp-circle", "--mean", "1,-1", "--std", "0.5,2"],
        check=True, capture_output=True,
    )  # fmt: skip
    x = rows(6, seed=3)
    with ServerProcess(tmp_path) as proc:
        c = triton.InferenceServerClient(proc.url)
        got = c.infer("mlp-circle-pipeline", [infer_input(x)]).as_numpy("probabilities")
        scaled = (x - np.array([1, -1], np.float32)) / np.array([0.5, 2], np.float32)
        direct = c.infer("mlp-circle", [infer_input(scaled)]).as_numpy("probabilities")
        c.close()
    want = reference(tmp_path / "mlp-circle" / "1" / "model.onnx", scaled)["probabilities"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(direct, want, rtol=1e-5, atol=1e-6)


def test_sigterm_answers_ensemble_requests_between_their_steps(tmp_path: Path) -> None:
    """Both steps slow: at SIGTERM most requests still wait for step 1, so
    their step 2 is queued while the server drains; every one is answered."""
    write_model(
        tmp_path, "first", model=slow_mlp(seed=21, matmuls=40, n=384), dynamic_batching=False
    )
    write_model(
        tmp_path, "last", model=slow_mlp(seed=22, matmuls=40, n=384), dynamic_batching=False
    )
    steps = [
        step_text("first", {"input": "input"}, {"logits": "mid"}),
        step_text("last", {"input": "mid"}, {"probabilities": "probabilities"}),
    ]
    config = ensemble_config("chain", [("input", 2)], [("probabilities", 2)], steps)
    write_ensemble(tmp_path, "chain", config)
    x = rows(1, seed=4)
    server = ServerProcess(tmp_path, "--exit-timeout-secs", "60", "--inference-threads", "1")
    with server, grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(request("chain", x), timeout=120) for _ in range(6)]
        assert wait_for(lambda: inflight(server, "chain") >= 6, timeout=60)
        code = server.stop(signal.SIGTERM, timeout=90)
        log = server.log()
        answers = [outputs(f.result())["probabilities"] for f in futures]
    assert code == 0, log[-3000:]
    mid = reference_of(mlp(seed=21), x)["logits"]
    want = reference_of(mlp(seed=22), mid)["probabilities"]
    for answer in answers:
        np.testing.assert_allclose(answer, want, rtol=1e-5, atol=1e-6)
    assert "Traceback" not in log, log[-5000:]
