"""Property-based fuzzing of ModelInfer against a real ``dlserve serve``.

Hypothesis generates requests with random model names and versions,
datatypes, shapes (zero, negative and huge dims), byte lengths, typed vs raw
contents, parameters and requested outputs (with classification). Every
answer must be OK or a status the contract gives to a client mistake, never
INTERNAL or UNKNOWN; valid requests must come back with onnxruntime's own
numbers; and the server must still be alive and correct at the end.

At least ``MIN_REQUESTS`` requests go out per run: each Hypothesis example is
a burst of requests sent concurrently over one channel (so they also meet in
the dynamic batcher). The generators and checks live in ``devtools/fuzzing.py``;
``scripts/fuzz.py`` runs them longer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import grpc
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.fuzzing import (
    CLIENT_CODES,
    INFER,
    assert_alive_and_correct,
    assert_client_status,
    build_repo,
    check_valid,
    for_broken_model,
    near_misses,
    random_requests,
    valid_request_bytes,
    valid_requests,
)
from devtools.serverproc import ServerProcess
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc

MIN_REQUESTS = 2000
BURST = 12  # requests per Hypothesis example
EXAMPLES = MIN_REQUESTS // BURST + 10

# --- the server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("fuzz-repo"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.url) as ch:
        yield ch


@pytest.fixture(scope="module")
def sessions(repo: Path) -> dict[str, ort.InferenceSession]:
    return {
        name: ort.InferenceSession(
            str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        for name in ("mlp", "fixed")
    }


# --- tests --------------------------------------------------------------------


def test_fuzz_model_infer(
    server: ServerProcess, channel: grpc.Channel, sessions: dict[str, ort.InferenceSession]
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    sent = {"random": 0, "valid": 0, "ok": 0}
    codes: dict[grpc.StatusCode, int] = {}

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )  # fmt: skip
    @given(
        st.lists(
            st.one_of(random_requests(), near_misses()), min_size=BURST - 4, max_size=BURST - 4
        ),
        st.lists(valid_requests(), min_size=3, max_size=3),
        valid_requests().map(for_broken_model),
    )
    def burst(
        randoms: list[pb.ModelInferRequest], valids: list[Any], broken: pb.ModelInferRequest
    ) -> None:
        randoms = [*randoms, broken]
        futures = [stub.ModelInfer.future(r, timeout=60) for r in randoms]
        valid_futures = [stub.ModelInfer.future(r, timeout=60) for r, _, _ in valids]
        for request, future in zip(randoms, futures, strict=True):
            sent["random"] += 1
            try:
                future.result()
                sent["ok"] += 1
            except grpc.RpcError as error:
                codes[error.code()] = codes.get(error.code(), 0) + 1
                assert_client_status(request, error)
        for (request, x, asked), future in zip(valids, valid_futures, strict=True):
            sent["valid"] += 1
            check_valid(future.result(), request, x, asked, sessions)

    burst()
    assert sent["random"] + sent["valid"] >= MIN_REQUESTS, sent
    # The generators reach every kind of answer, not only the first check.
    assert sent["ok"] > 0, (sent, codes)
    assert {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} <= set(codes), codes
    assert codes.get(grpc.StatusCode.UNAVAILABLE), codes  # the broken model
    assert_alive_and_correct(server, channel, sessions)


def test_fuzz_garbage_bodies(
    server: ServerProcess, channel: grpc.Channel, sessions: dict[str, ort.InferenceSession]
) -> None:
    """Bytes that are not (or barely) a protobuf message, as the body of
    ModelInfer and of other RPCs: a clean status, never UNKNOWN/INTERNAL."""
    methods = [
        INFER,
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ModelConfig",
        "/inference.GRPCInferenceService/RepositoryIndex",
        "/inference.GRPCInferenceService/ModelStatistics",
        "/grpc.health.v1.Health/Check",
    ]
    calls = {m: channel.unary_unary(m) for m in methods}  # no serializers: bytes in, bytes out
    valid = valid_request_bytes()
    codes: dict[grpc.StatusCode, int] = {}

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=64),
                st.binary(min_size=1, max_size=8).map(lambda b: b"\xff" + b),
                st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
                st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=3)).map(
                    lambda t: valid[: t[0]] + t[1] + valid[t[0] + len(t[1]) :]
                ),
            ),
            min_size=len(methods),
            max_size=len(methods),
        )
    )
    def bodies(blobs: list[bytes]) -> None:
        futures = [calls[m].future(b, timeout=60) for m, b in zip(methods, blobs, strict=True)]
        for method, body, future in zip(methods, blobs, futures, strict=True):
            try:
                future.result()
                codes[grpc.StatusCode.OK] = codes.get(grpc.StatusCode.OK, 0) + 1
            except grpc.RpcError as error:
                codes[error.code()] = codes.get(error.code(), 0) + 1
                assert error.code() in CLIENT_CODES, (method, body, error.code(), error.details())

    bodies()
    # Definitely not a message: a field with wire type 7 does not exist.
    with pytest.raises(grpc.RpcError) as info:
        calls[INFER](b"\x0f\x0f\x0f", timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in info.value.details()
    assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0, codes
    assert_alive_and_correct(server, channel, sessions)


def test_garbage_in_the_middle_of_a_stream(channel: grpc.Channel) -> None:
    """ModelStreamInfer: the requests before a message that does not parse are
    answered, then the stream ends with INVALID_ARGUMENT."""
    stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    good = valid_request_bytes()
    call = stream(iter([good, good, b"\x0f\x0f\x0f"]), timeout=60)
    answers = []
    with pytest.raises(grpc.RpcError) as info:
        for raw in call:
            answers.append(pb.ModelStreamInferResponse.FromString(raw))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert len(answers) == 2
    assert all(not a.error_message and a.infer_response.model_name == "mlp" for a in answers)
