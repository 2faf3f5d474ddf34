"""Requests that must not share a batch, and limits that fail one request
alone, against a real ``dlserve serve`` (probe findings F2, F5, F13).

- F2: config dims of -1 let two valid requests differ in a non-batch dim;
  an ``optional`` input may be sent by one request and omitted by another.
  Such requests meet in one batcher (the models wait 20 ms for company) but
  must never be concatenated: every request is answered with its own right
  value and the batcher's worker survives (the model answers afterwards).
- F5: the queue is bounded in bytes (``--max-queue-bytes``): the tensors
  and the id a queued request keeps; past it a request gets UNAVAILABLE at
  once; one request alone is always admitted.
- F13: an answer over ``--max-message-bytes`` (from a request well under
  it) fails that request alone with RESOURCE_EXHAUSTED; on a stream it is
  that answer's ``error_message`` and the stream goes on. /metrics counts
  each such request under code RESOURCE_EXHAUSTED (never OK) and the server
  logs no traceback for it.

The models (``scripts/fuzz_batching.py``) answer row sums of small
integers, so the expected values are exact. No assertion depends on timing.
"""

from __future__ import annotations

import queue
import random
from pathlib import Path
from typing import Any, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from devtools.serverproc import ServerProcess
from scripts import fuzz_batching as fb
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.http_helpers import counter

TIMEOUT = 30  # seconds a request may take before it counts as never answered
MESSAGE_LIMIT = 256 * 1024  # --max-message-bytes of the F13 server
QUEUE_BYTES = 4096  # --max-queue-bytes of the F5 server


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.build_repo(tmp_path_factory.mktemp("batch-safety-repo"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def triton_inputs(case: fb.Case) -> list[triton.InferInput]:
    inputs = []
    for name, datatype, shape, raw in case.tensors:
        tensor = triton.InferInput(name, list(shape), datatype)
        tensor.set_data_from_numpy(np.frombuffer(raw, np.float32).reshape(shape))
        inputs.append(tensor)
    return inputs


def send_all(server: ServerProcess, cases: list[fb.Case]) -> list[tuple[Any, str, str]]:
    """Every case at once through tritonclient.grpc (async_infer): each
    one's (output y or None, status code name, message)."""
    client = triton.InferenceServerClient(server.url)
    done: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    try:
        for i, case in enumerate(cases):
            client.async_infer(
                case.model, triton_inputs(case),
                callback=lambda result, error, i=i: done.put((i, result, error)),
                client_timeout=TIMEOUT,
            )  # fmt: skip
        outcomes: dict[int, tuple[Any, str, str]] = {}
        for _ in cases:
            i, result, error = done.get(timeout=TIMEOUT + 30)
            if error is not None:
                assert isinstance(error, InferenceServerException), repr(error)
                code = (error.status() or "").replace("StatusCode.", "")
                outcomes[i] = (None, code, error.message() or "")
            else:
                outcomes[i] = (result.as_numpy("y"), "OK", "")
    finally:
        client.close()
    return [outcomes[i] for i in range(len(cases))]


def assert_answered(cases: list[fb.Case], outcomes: list[tuple[Any, str, str]]) -> None:
    wrong = []
    for case, (y, code, message) in zip(cases, outcomes, strict=True):
        what = f"{case.model} {[(t[0], t[2]) for t in case.tensors]}: {code} {message}"
        if case.error is not None:
            if code != case.error:
                wrong.append(f"expected {case.error}: {what}")
        elif code != "OK" or y is None or not np.array_equal(y, case.expect):
            wrong.append(f"expected {case.expect.ravel()[:4]}, got {y}: {what}")  # type: ignore[union-attr]
    assert not wrong, f"{len(wrong)} of {len(cases)} wrong:\n" + "\n".join(wrong[:10])


def assert_model_answers(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> None:
    """The batcher's worker is alive: a plain request is answered."""
    fb.assert_every_model_answers(stub, {model})


# --- F2: what may share a batch ---------------------------------------------------


@pytest.mark.parametrize("model", ["rowsum", "pair", "rowsum-multi"])
def test_concurrent_requests_of_random_widths_are_all_answered_right(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub, model: str
) -> None:
    rng = random.Random(model)
    spec = fb.MODELS[model]
    cases = [
        fb.valid_case(
            model, rng.randint(1, 4), {i.name: rng.randint(1, 6) for i in spec.inputs}, seed
        )
        for seed in range(120)
    ]
    assert len({c.tensors[0][2][1] for c in cases}) > 1  # they do differ
    assert_answered(cases, send_all(server, cases))
    assert_model_answers(stub, model)


def test_an_optional_input_without_a_graph_default_is_required(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """needsbias marks ``bias`` optional, but its graph has no default: a
    request without it is INVALID_ARGUMENT, and the requests with it that
    meet it in the batcher are answered right."""
    rng = random.Random(2)
    cases = []
    for seed in range(80):
        omit = ["bias"] if seed % 3 == 0 else []
        case = fb.valid_case("needsbias", rng.randint(1, 4), {"x": rng.randint(1, 6)}, seed, omit)
        if omit:
            case = fb.Case(case.model, case.tensors, error="INVALID_ARGUMENT")
        cases.append(case)
    outcomes = send_all(server, cases)
    assert_answered(cases, outcomes)
    refused = [m for (_, code, m), c in zip(outcomes, cases, strict=True) if c.error]
    assert all("optional" in m and "bias" in m for m in refused), refused[:3]
    assert_model_answers(stub, "needsbias")


def test_an_optional_input_sent_by_some_and_omitted_by_others(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """biased's ``bias`` is optional with a graph default (an overridable
    initializer): requests with and without it meet in one batcher and each
    gets its own answer (the default where omitted)."""
    assert stub.ModelReady(pb.ModelReadyRequest(name="biased"), timeout=TIMEOUT).ready, (
        server.log()[-2000:]
    )
    rng = random.Random(3)
    cases = [
        fb.valid_case(
            "biased", rng.randint(1, 4), {"x": rng.randint(1, 6)}, seed,
            ["bias"] if seed % 2 else [],
        )
        for seed in range(80)
    ]  # fmt: skip
    assert_answered(cases, send_all(server, cases))
    assert_model_answers(stub, "biased")


# --- F5: the queue is bounded in bytes ------------------------------------------------


@pytest.fixture(scope="module")
def queue_server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        repo, "--inference-threads", "1", "--max-queue-bytes", str(QUEUE_BYTES)
    ) as proc:
        yield proc


def test_requests_past_the_queue_byte_bound_get_unavailable(
    queue_server: ServerProcess,
) -> None:
    """slowsum runs one request at a time; a burst of 2 KiB requests fills
    the 4 KiB queue bound, the rest are refused at once naming it, and
    every admitted request is answered right."""
    width = QUEUE_BYTES // (2 * 16 * 4)  # a 16-row request holds half the bound
    cases = [fb.valid_case("slowsum", 16, {"x": width}, seed) for seed in range(10)]
    assert all(c.nbytes == QUEUE_BYTES // 2 for c in cases)
    outcomes = send_all(queue_server, cases)
    refused = [(code, m) for _, code, m in outcomes if code != "OK"]
    assert refused, "no request was refused: the queue is not bounded in bytes"
    assert all(code == "UNAVAILABLE" for code, _ in refused), refused
    assert all("bytes of requests queued" in m and "limit" in m for _, m in refused), refused
    answered = [(c, o) for c, o in zip(cases, outcomes, strict=True) if o[1] == "OK"]
    assert len(answered) >= 2
    for case, (y, _, _) in answered:
        np.testing.assert_array_equal(y, case.expect)

    # The bound sheds load, it does not stick: one request alone is always
    # admitted, even one over the bound.
    big = fb.valid_case("slowsum", 16, {"x": 4 * width}, 99)
    assert big.nbytes > QUEUE_BYTES
    assert_answered([big], send_all(queue_server, [big]))


@pytest.mark.parametrize(
    ("request_id", "count"),
    # 2,400 UTF-8 bytes in 600 characters: counted in characters, four of
    # them (2,464) would fit the bound and none would be refused.
    [("i" * 3000, 10), ("\N{GRINNING FACE}" * 600, 5)],
    ids=["ascii", "utf-8"],
)
def test_a_long_request_id_counts_against_the_queue_byte_bound(
    queue_server: ServerProcess, request_id: str, count: int
) -> None:
    """The probe sent 4 MiB ids with tiny tensors: only the tensors counted,
    so the queue held any number of ids. A burst of 16-byte requests whose
    ids are 2-3 KB each (in UTF-8) passes the 4 KiB bound after one queued
    request: the rest are refused at once naming it; the admitted ones are
    answered right, their ids echoed."""
    size = len(request_id.encode())
    cases = [fb.valid_case("slowsum", 1, {"x": 4}, seed) for seed in range(count)]
    assert all(c.nbytes + size < QUEUE_BYTES < c.nbytes + 2 * size for c in cases)
    with grpc.insecure_channel(queue_server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        futures = [
            stub.ModelInfer.future(c.request(f"{i}{request_id}"), timeout=TIMEOUT)
            for i, c in enumerate(cases)
        ]
        refused, answered = [], 0
        for i, (case, future) in enumerate(zip(cases, futures, strict=True)):
            try:
                response = future.result()
            except grpc.RpcError as error:
                refused.append((error.code(), error.details() or ""))
                continue
            fb.check(case, response, "OK", "")
            assert response.id == f"{i}{request_id}"
            answered += 1
    assert refused, "no request was refused: queued request ids are not counted"
    assert all(code == grpc.StatusCode.UNAVAILABLE for code, _ in refused), refused
    assert all("bytes of requests queued" in message for _, message in refused), refused
    assert answered >= 2  # one ran, one queued: the bound sheds load, it does not stick


# --- F13: an answer over --max-message-bytes -------------------------------------------


@pytest.fixture(scope="module")
def small_message_server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo, "--max-message-bytes", str(MESSAGE_LIMIT)) as proc:
        yield proc


@pytest.fixture(scope="module")
def small_stub(
    small_message_server: ServerProcess,
) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(small_message_server.url, options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def tiled(rows: int, seed: int = 0) -> fb.Case:
    return fb.valid_case("tiled", rows, {}, seed)


BIG_ROWS = 32  # a 512-byte request whose answer is 512 KiB, over the 256 KiB limit
SMALL_ROWS = 2  # a 32 KiB answer


def codes(server: ServerProcess) -> dict[str, float]:
    """dlserve_requests_total of model ``tiled`` by code, from /metrics."""
    return {code: counter(server, "tiled", code) for code in ("OK", "RESOURCE_EXHAUSTED")}


def assert_counted(
    server: ServerProcess, before: dict[str, float], ok: int, exhausted: int
) -> None:
    """The refused answers are counted as RESOURCE_EXHAUSTED, not OK, and
    the server logged no traceback for them."""
    after = codes(server)
    assert after["RESOURCE_EXHAUSTED"] - before["RESOURCE_EXHAUSTED"] == exhausted, (before, after)
    assert after["OK"] - before["OK"] == ok, (before, after)
    assert "Traceback" not in server.log(), server.log()[-5000:]


def test_an_answer_over_the_message_limit_fails_that_request_alone_unary(
    small_message_server: ServerProcess, small_stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = codes(small_message_server)
    big = tiled(BIG_ROWS)
    assert big.nbytes < MESSAGE_LIMIT < big.expect.nbytes  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError) as info:
        small_stub.ModelInfer(big.request(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert "--max-message-bytes" in (info.value.details() or ""), info.value.details()
    small = tiled(SMALL_ROWS, 1)
    fb.check(small, small_stub.ModelInfer(small.request(), timeout=TIMEOUT), "OK", "")
    assert_counted(small_message_server, before, ok=1, exhausted=1)


def test_requests_whose_batch_is_over_the_limit_are_each_answered(
    small_message_server: ServerProcess,
) -> None:
    """The limit is per answer, not per batch: 12 concurrent 12-row requests
    (192 KiB answers) batch into runs far over 256 KiB and all succeed."""
    cases = [tiled(12, seed) for seed in range(12)]
    assert_answered(cases, send_all(small_message_server, cases))


def test_an_answer_over_the_message_limit_fails_alone_on_a_stream(
    small_message_server: ServerProcess, small_stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    before = codes(small_message_server)
    cases = [tiled(SMALL_ROWS, 0), tiled(BIG_ROWS, 1), tiled(SMALL_ROWS, 2)] * 3
    answers = {
        a.infer_response.id: a
        for a in small_stub.ModelStreamInfer(
            iter([c.request(str(i)) for i, c in enumerate(cases)]), timeout=TIMEOUT
        )
    }  # the stream ends cleanly: no RpcError
    assert sorted(answers, key=int) == [str(i) for i in range(len(cases))]
    for i, case in enumerate(cases):
        answer = answers[str(i)]
        if case.tensors[0][2][0] == BIG_ROWS:
            assert "--max-message-bytes" in answer.error_message, answer.error_message
            assert answer.infer_response.model_name == "tiled"
        else:
            assert not answer.error_message, answer.error_message
            fb.check(case, answer.infer_response, "OK", "")
    # The same stream goes on after the refused answer (one stream, one refusal first).
    later = [tiled(BIG_ROWS, 5), *(tiled(SMALL_ROWS, s) for s in range(6, 10))]
    answers_list = list(
        small_stub.ModelStreamInfer(
            iter([c.request(str(i)) for i, c in enumerate(later)]), timeout=TIMEOUT
        )
    )
    assert len(answers_list) == len(later)
    assert sum(bool(a.error_message) for a in answers_list) == 1
    assert_counted(small_message_server, before, ok=6 + 4, exhausted=3 + 1)
