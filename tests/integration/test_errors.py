"""Every row of the contract's error table, end to end: the gRPC status code
and a message that names the input and what was expected.

    unknown model or version                          NOT_FOUND
    wrong input name, datatype, shape, byte length;
      batch over max_batch_size                       INVALID_ARGUMENT
    a dimension that is zero or negative; 0 rows      INVALID_ARGUMENT
    model known but not ready (failed load, unloaded) UNAVAILABLE
    message over --max-message-bytes                  RESOURCE_EXHAUSTED
    auth enabled and the bearer token missing/wrong   UNAUTHENTICATED
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import (
    CLASSIFIER_MAX_BATCH,
    infer_input,
    model_file,
    raw_request,
    reference,
    rows,
    rpc_error,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
Stub = pb_grpc.GRPCInferenceServiceStub


def f32(*shape: int) -> bytes:
    return np.zeros(shape, dtype=np.float32).tobytes()


# --- NOT_FOUND ---------------------------------------------------------------


def test_unknown_model(client: triton.InferenceServerClient) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND, "unknown model 'no-such-model'"):
        client.infer("no-such-model", [infer_input(rows(1))])
    with rpc_error(grpc.StatusCode.NOT_FOUND, "no-such-model"):
        client.get_model_metadata("no-such-model")
    with rpc_error(grpc.StatusCode.NOT_FOUND, "no-such-model"):
        client.get_model_config("no-such-model")


@pytest.mark.parametrize("version", ["2", "999999999999999999999", "latest", "-1"])
def test_unknown_version(client: triton.InferenceServerClient, version: str) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND, "'classifier'", "version"):
        client.infer("classifier", [infer_input(rows(1))], model_version=version)
    with rpc_error(grpc.StatusCode.NOT_FOUND, "'classifier'", "version"):
        client.get_model_metadata("classifier", version)


@pytest.mark.parametrize("name", ["", "../classifier", "classifier/..", ".hidden", "a\0b"])
def test_odd_model_names_are_unknown(stub: Stub, name: str) -> None:
    with rpc_error(grpc.StatusCode.NOT_FOUND, "unknown model"):
        stub.ModelInfer(raw_request(name, [1, 2], f32(1, 2)), timeout=10)


def test_unknown_model_in_a_very_long_name_is_cut_short(stub: Stub) -> None:
    name = "m" * 100_000
    with rpc_error(grpc.StatusCode.NOT_FOUND, "unknown model"):
        try:
            stub.ModelInfer(raw_request(name, [1, 2], f32(1, 2)), timeout=10)
        except grpc.RpcError as exc:
            assert len(exc.details()) < 1000
            raise


# --- INVALID_ARGUMENT: what the request says about its inputs ------------------


# (request, status message fragments). The classifier takes input [-1, 2] FP32,
# max_batch_size 16; "fixed" takes [3, 2] without batching.
BAD_REQUESTS: dict[str, tuple[pb.ModelInferRequest, tuple[str, ...]]] = {
    "wrong input name": (
        raw_request("classifier", [1, 2], f32(1, 2), name="features"),
        ("no input 'features'", "['input']"),
    ),
    "wrong datatype": (
        raw_request("classifier", [1, 2], np.zeros((1, 2), np.float64).tobytes(), datatype="FP64"),
        ("input 'input' must be FP32, got FP64",),
    ),
    "BYTES to an FP32 model": (
        # Malformed BYTES too: the datatype must be refused before any decoding.
        raw_request("classifier", [1, 2], b"\xff\xff\xff\x7f", datatype="BYTES"),
        ("input 'input' must be FP32, got BYTES",),
    ),
    "unknown datatype": (
        raw_request("classifier", [1, 2], f32(1, 2), datatype="FLOAT"),
        ("input 'input'", "unknown datatype 'FLOAT'"),
    ),
    "wrong rank": (
        raw_request("classifier", [2], f32(2)),
        ("input 'input' has shape [2], expected [-1, 2]",),
    ),
    "wrong inner dim": (
        raw_request("classifier", [1, 3], f32(1, 3)),
        ("input 'input' has shape [1, 3], expected [-1, 2]",),
    ),
    "wrong shape unbatched": (
        raw_request("fixed", [1, 3, 2], f32(1, 3, 2)),
        ("input 'input' has shape [1, 3, 2], expected [3, 2]",),
    ),
    "too few bytes": (
        raw_request("classifier", [2, 2], f32(2, 2)[:12]),
        ("input 'input'", "needs 16 bytes", "got 12"),
    ),
    "too many bytes": (
        raw_request("classifier", [1, 2], f32(3, 2)),
        ("input 'input'", "needs 8 bytes", "got 24"),
    ),
    "bytes not a whole element": (
        raw_request("classifier", [1, 2], f32(1, 2)[:7]),
        ("input 'input'", "7 bytes", "FP32"),
    ),
    "huge declared shape, few bytes": (
        raw_request("classifier", [16, 2**40], f32(1, 2)),
        ("input 'input'",),
    ),
    "batch over max_batch_size": (
        raw_request("classifier", [CLASSIFIER_MAX_BATCH + 1, 2], f32(CLASSIFIER_MAX_BATCH + 1, 2)),
        ("input 'input'", f"batch size {CLASSIFIER_MAX_BATCH + 1}", "max_batch_size 16"),
    ),
    "batch of 0 rows": (
        raw_request("classifier", [0, 2], b""),
        ("input 'input' has shape [0, 2]", "positive"),
    ),
    "zero inner dim": (
        raw_request("classifier", [1, 0], b""),
        ("input 'input' has shape [1, 0]", "positive"),
    ),
    "negative batch": (
        raw_request("classifier", [-1, 2], f32(1, 2)),
        ("input 'input' has shape [-1, 2]", "positive"),
    ),
    "negative inner dim": (
        raw_request("classifier", [1, -2], f32(1, 2)),
        ("input 'input' has shape [1, -2]", "positive"),
    ),
    "zero dim unbatched": (
        raw_request("fixed", [0, 2], b""),
        ("input 'input' has shape [0, 2]", "positive"),
    ),
    "input missing": (
        pb.ModelInferRequest(model_name="classifier"),
        ("needs input(s) ['input']",),
    ),
    "input given twice": (
        pb.ModelInferRequest(
            model_name="classifier",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 2]),
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 2]),
            ],
            raw_input_contents=[f32(1, 2), f32(1, 2)],
        ),
        ("input 'input' is given more than once",),
    ),
    "more raw entries than inputs": (
        pb.ModelInferRequest(
            model_name="classifier",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 2])
            ],
            raw_input_contents=[f32(1, 2), f32(1, 2)],
        ),
        ("raw_input_contents has 2 entries for 1 inputs",),
    ),
    "no data at all": (
        pb.ModelInferRequest(
            model_name="classifier",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 2])
            ],
        ),
        ("input 'input' carries no data", "fp32_contents"),
    ),
    "typed contents in the wrong field": (
        pb.ModelInferRequest(
            model_name="classifier",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=[1, 2],
                    contents=pb.InferTensorContents(fp64_contents=[0.0, 0.0]),
                )  # fmt: skip
            ],
        ),
        ("input 'input' is FP32", "contents.fp64_contents", "use contents.fp32_contents"),
    ),
    "typed contents too short": (
        pb.ModelInferRequest(
            model_name="classifier",
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=[2, 2],
                    contents=pb.InferTensorContents(fp32_contents=[0.0, 0.0, 0.0]),
                )  # fmt: skip
            ],
        ),
        ("input 'input'", "needs 4 elements, got 3"),
    ),
}


def _both_raw_and_typed() -> pb.ModelInferRequest:
    request = raw_request("classifier", [1, 2], f32(1, 2))
    request.inputs[0].contents.fp32_contents.extend([0.0, 0.0])
    return request


BAD_REQUESTS["raw and typed contents together"] = (
    _both_raw_and_typed(),
    ("input 'input' has both typed contents and raw_input_contents",),
)


def _bad_output(name: str, class_count: int | None = None) -> pb.ModelInferRequest:
    request = raw_request("classifier", [1, 2], f32(1, 2))
    out = request.outputs.add(name=name)
    if class_count is not None:
        out.parameters["classification"].int64_param = class_count
    return request


BAD_REQUESTS["unknown requested output"] = (
    _bad_output("scores"),
    ("no output 'scores'", "['logits', 'probabilities']"),
)
BAD_REQUESTS["class_count of 0"] = (
    _bad_output("probabilities", 0),
    ("output 'probabilities'", "class_count >= 1"),
)


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_invalid_request(stub: Stub, case: str) -> None:
    request, fragments = BAD_REQUESTS[case]
    with rpc_error(INVALID, *fragments):
        stub.ModelInfer(request, timeout=10)


def test_invalid_requests_through_tritonclient(client: triton.InferenceServerClient) -> None:
    """The same checks reached through the client users have."""
    with rpc_error(INVALID, "no input 'x'"):
        client.infer("classifier", [infer_input(rows(1), name="x")])
    with rpc_error(INVALID, "input 'input' must be FP32, got INT32"):
        client.infer("classifier", [infer_input(np.zeros((1, 2), np.int32), datatype="INT32")])
    with rpc_error(INVALID, "input 'input' has shape [1, 1, 2], expected [-1, 2]"):
        client.infer("classifier", [infer_input(rows(1)[None])])
    with rpc_error(INVALID, "batch size 17", "max_batch_size 16"):
        client.infer("classifier", [infer_input(rows(17))])
    with rpc_error(INVALID, "input 'input' has shape [0, 2]"):
        client.infer("classifier", [infer_input(rows(0))])


# --- UNAVAILABLE ---------------------------------------------------------------


def test_model_that_failed_to_load_is_unavailable(client: triton.InferenceServerClient) -> None:
    with rpc_error(grpc.StatusCode.UNAVAILABLE, "'broken'", "not ready", "model.onnx"):
        client.infer("broken", [infer_input(rows(1))])
    with rpc_error(grpc.StatusCode.UNAVAILABLE, "'broken'", "version 1"):
        client.infer("broken", [infer_input(rows(1))], model_version="1")
    with rpc_error(grpc.StatusCode.UNAVAILABLE, "'broken'"):
        client.get_model_metadata("broken")


def test_model_unloaded_in_explicit_mode_is_unavailable(model_repo: Path) -> None:
    with InProcessServer(model_repo, "--model-control-mode", "explicit") as proc:
        c = triton.InferenceServerClient(proc.url)
        c.load_model("classifier")
        c.infer("classifier", [infer_input(rows(1))])
        c.unload_model("classifier")
        with rpc_error(grpc.StatusCode.UNAVAILABLE, "'classifier'", "unloaded"):
            c.infer("classifier", [infer_input(rows(1))])
        with rpc_error(grpc.StatusCode.UNAVAILABLE, "'classifier'", "unloaded"):
            c.infer("classifier", [infer_input(rows(1))], model_version="1")
        c.close()


# --- a battery of bad requests leaves the server answering correctly -----------------


def test_after_a_battery_of_bad_requests_a_valid_one_is_right(
    stub: Stub, client: triton.InferenceServerClient, model_repo: Path
) -> None:
    for request, _ in BAD_REQUESTS.values():
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(request, timeout=10)
    # ...and the same requests inside one stream, which must stay open: each
    # is answered in-stream with its message, the good one with its result.
    x = rows(CLASSIFIER_MAX_BATCH, seed=99)
    good = raw_request("classifier", x.shape, x.tobytes())
    good.id = "good"
    requests = []
    for case, (request, _) in BAD_REQUESTS.items():
        requests.append(pb.ModelInferRequest())
        requests[-1].CopyFrom(request)
        requests[-1].id = case
    answers = list(stub.ModelStreamInfer(iter([*requests, good]), timeout=30))
    assert len(answers) == len(BAD_REQUESTS) + 1
    errors = {a.infer_response.id: a.error_message for a in answers if a.error_message}
    assert sorted(errors) == sorted(BAD_REQUESTS)
    for case, (_, fragments) in BAD_REQUESTS.items():
        assert all(f in errors[case] for f in fragments), (case, errors[case])
    (ok,) = [a.infer_response for a in answers if not a.error_message]
    assert ok.id == "good"
    got = np.frombuffer(ok.raw_output_contents[0], np.float32).reshape(CLASSIFIER_MAX_BATCH, 3)
    want = reference(model_file(model_repo, "classifier"), x)
    np.testing.assert_allclose(got, want["logits"], atol=1e-6)
    # Unary again, after the stream closed.
    assert client.is_server_ready() and client.is_model_ready("classifier")
    result = client.infer("classifier", [infer_input(x)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-6)


# --- RESOURCE_EXHAUSTED ------------------------------------------------------------

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    repo = tmp_path_factory.mktemp("small-limit")
    # 2 features in, 256 classes out: a small request can ask for a big answer.
    write_model(repo, "wide", model=mlp(classes=256, hidden=(4,)), max_batch_size=1024)
    with InProcessServer(repo, "--max-message-bytes", str(LIMIT)) as proc:
        yield proc


def test_request_over_max_message_bytes(small_limit: InProcessServer) -> None:
    c = triton.InferenceServerClient(small_limit.url)
    n = LIMIT // 8 + 1  # 2 FP32 per row: just over the limit
    with rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, str(LIMIT)):
        c.infer("wide", [infer_input(rows(n))])
    # Under the limit it works, and the server is unharmed.
    assert c.infer("wide", [infer_input(rows(8))]).as_numpy("logits").shape == (8, 256)
    c.close()


def test_response_over_max_message_bytes(small_limit: InProcessServer) -> None:
    c = triton.InferenceServerClient(small_limit.url)
    # 100 rows: 800 request bytes; 2 outputs x 100 x 256 x 4 = 200 KiB back.
    with rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED):
        c.infer("wide", [infer_input(rows(100))])
    result = c.infer("wide", [infer_input(rows(4))])
    assert result.as_numpy("probabilities").shape == (4, 256)
    c.close()


# --- UNAUTHENTICATED -----------------------------------------------------------------

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def auth_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN + "\n")
    with InProcessServer(model_repo, "--auth-token-file", str(token_file)) as proc:
        yield proc.url


def _auth_calls(c: triton.InferenceServerClient) -> dict[str, Callable[..., Any]]:
    return {
        "infer": lambda h: c.infer("classifier", [infer_input(rows(1))], headers=h),
        "model_metadata": lambda h: c.get_model_metadata("classifier", headers=h),
        "model_config": lambda h: c.get_model_config("classifier", headers=h),
        "model_ready": lambda h: c.is_model_ready("classifier", headers=h),
        "server_metadata": lambda h: c.get_server_metadata(headers=h),
        "statistics": lambda h: c.get_inference_statistics("classifier", headers=h),
        "repository_index": lambda h: c.get_model_repository_index(headers=h),
    }


@pytest.mark.parametrize(
    "headers",
    [None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}, {"x-token": TOKEN}],
    ids=["missing", "wrong", "no-bearer-prefix", "other-header"],
)
def test_auth_rejects_missing_or_wrong_token(
    auth_server: str, headers: dict[str, str] | None
) -> None:
    c = triton.InferenceServerClient(auth_server)
    for call in _auth_calls(c).values():
        with rpc_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            call(headers)
    c.close()


def test_auth_accepts_the_right_token(auth_server: str, model_repo: Path) -> None:
    c = triton.InferenceServerClient(auth_server)
    headers = {"authorization": f"Bearer {TOKEN}"}
    for call in _auth_calls(c).values():
        call(headers)
    x = rows(3)
    result = c.infer("classifier", [infer_input(x)], headers=headers)
    want = reference(model_file(model_repo, "classifier"), x)["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), want, atol=1e-6)
    c.close()


def test_auth_stream_needs_the_token(auth_server: str) -> None:
    request = raw_request("classifier", [1, 2], f32(1, 2))
    with grpc.insecure_channel(auth_server) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
        with rpc_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            list(stream(iter([request]), timeout=10))
        with rpc_error(grpc.StatusCode.UNAUTHENTICATED, "bearer token"):
            list(stream(iter([request]), metadata=[("authorization", "Bearer no")], timeout=10))
        (answer,) = stream(
            iter([request]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=10
        )
    assert answer.error_message == ""
    assert answer.infer_response.model_name == "classifier"


def test_auth_leaves_health_and_liveness_open(auth_server: str) -> None:
    c = triton.InferenceServerClient(auth_server)
    assert c.is_server_live() and c.is_server_ready()
    c.close()
    with grpc.insecure_channel(auth_server) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
