"""Backpressure and limits against a real ``dlserve serve``: a bounded queue
per model version that refuses fast with UNAVAILABLE, per-request deadlines
that drop a queued request before it runs, ``--max-message-bytes``, and an
``instance_group`` count far past the worker cap (probe finding F4).

A deliberately slow ONNX model (``slow_mlp``: an MLP plus a chain of matrix
products that adds exactly zero) keeps the single inference thread busy, so
requests really wait in the queue. No assertion depends on how long it
takes: only on the order of events.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, slow_mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from serving.batcher import MAX_WORKERS
from tests.integration.helpers import expected, inflight, outputs, request

FLAG_QUEUE = 2  # --max-queue-size
CONFIG_QUEUE = 1  # default_queue_policy.max_queue_size of model "slow-config-queue"


# --- the server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("limits-repo")
    # No dynamic_batching: every request runs on its own, one after another.
    write_model(repo, "slow", model=slow_mlp(seed=1), dynamic_batching=False)
    write_model(
        repo, "slow-config-queue", model=slow_mlp(seed=2),
        extra=f"dynamic_batching {{ default_queue_policy {{ max_queue_size: {CONFIG_QUEUE} }} }}\n",
        dynamic_batching=False,
    )  # fmt: skip
    # ~1 s a request even on an idle machine: the deadline test's long request.
    write_model(repo, "slower", model=slow_mlp(seed=4, matmuls=300), dynamic_batching=False)
    write_model(repo, "fast", model=mlp(seed=3))
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(
        repo, "--inference-threads", "1", "--max-queue-size", str(FLAG_QUEUE),
        "--max-message-bytes", str(64 * 1024),
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def statistics(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> pb.ModelStatistics:
    reply = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=30)
    (stats,) = reply.model_stats
    return stats


# --- tests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "seed", "limit"), [("slow", 1, FLAG_QUEUE), ("slow-config-queue", 2, CONFIG_QUEUE)]
)
def test_full_queue_refuses_with_unavailable(
    stub: pb_grpc.GRPCInferenceServiceStub, model: str, seed: int, limit: int
) -> None:
    """A burst far over the queue bound: the overflow is refused at once with
    UNAVAILABLE naming the bound; every accepted request is answered right."""
    x = np.random.default_rng(seed).uniform(-2, 2, (4, 2)).astype(np.float32)
    want = expected(seed, x)
    futures: list[Future[pb.ModelInferResponse]] = [
        stub.ModelInfer.future(request(model, x), timeout=300) for _ in range(16)
    ]
    ok, refused = 0, []
    for future in futures:
        try:
            got = outputs(future.result())
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            refused.append(error.details())
            continue
        ok += 1
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert ok >= 1 and refused, (ok, refused)
    # A request is refused only when the queue holds exactly its bound.
    assert all(f"has {limit} requests queued, its limit" in m for m in refused), refused
    assert statistics(stub, model).inference_count == 4 * ok


def test_expired_request_is_dropped_before_compute(
    server: InProcessServer, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """A request whose deadline passes while it waits behind a long one is
    never run: the model's execution count does not include it."""
    model = "slower"
    before = statistics(stub, model)
    x = np.ones((2, 2), np.float32)
    long = stub.ModelInfer.future(request(model, x), timeout=300)
    assert wait_for(lambda: inflight(server, model) >= 1, timeout=60), "first request never arrived"
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request(model, x), timeout=0.05)  # queued behind the long one
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    np.testing.assert_array_equal(outputs(long.result())["logits"], expected(4, x)["logits"])
    # One more after the long one: it runs, the expired one still does not.
    stub.ModelInfer(request(model, x), timeout=300)
    after = statistics(stub, model)
    assert after.execution_count - before.execution_count == 2
    assert after.inference_count - before.inference_count == 4


def test_message_over_the_limit_is_resource_exhausted(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    small = np.zeros((2, 2), np.float32)
    stub.ModelInfer(request("fast", small), timeout=30)
    big = np.zeros((20_000, 2), np.float32)  # 160 kB > --max-message-bytes 64 KiB
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request("fast", big), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    # The server still answers afterwards.
    assert outputs(stub.ModelInfer(request("fast", small), timeout=30))["logits"].shape == (2, 2)


def test_queue_bound_frees_up(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """After a burst is refused, the same model serves again once its queue
    drains: refusal is load shedding, not a stuck state."""
    x = np.zeros((1, 2), np.float32)
    for _ in range(3):
        got = outputs(stub.ModelInfer(request("slow", x), timeout=300))
        np.testing.assert_array_equal(got["probabilities"], expected(1, x)["probabilities"])


# --- F4: a huge instance_group count --------------------------------------------------

HUGE_COUNT = 2**31 - 1  # the largest int32 config.pbtxt allows


def test_a_huge_instance_group_count_is_clamped_and_everyone_is_served(tmp_path: Path) -> None:
    """Probe finding F4: ``instance_group { count: 2147483647 }`` used to
    start that many worker tasks, stalling all traffic until OOM. The server
    starts, serves that model with its workers clamped (one warning naming
    the limit), and a neighbour model keeps answering beside it."""
    groups = f"instance_group [ {{ count: {HUGE_COUNT} kind: KIND_CPU }} ]\n"
    write_model(tmp_path, "crowded", model=mlp(seed=7), extra=groups)
    write_model(tmp_path, "neighbour", model=mlp(seed=8))
    with ServerProcess(tmp_path) as server, grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        assert {(m.name, m.state) for m in index.models} == {
            ("crowded", "READY"), ("neighbour", "READY")
        }, index  # fmt: skip
        config = stub.ModelConfig(pb.ModelConfigRequest(name="crowded"), timeout=30).config
        assert [g.count for g in config.instance_group] == [HUGE_COUNT]  # as written
        x = np.random.default_rng(0).uniform(-2, 2, (3, 2)).astype(np.float32)
        futures = [
            (seed, stub.ModelInfer.future(request(model, x), timeout=60))
            for _ in range(16)
            for model, seed in (("crowded", 7), ("neighbour", 8))
        ]
        for seed, future in futures:
            got, want = outputs(future.result()), expected(seed, x)
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        log = server.log()
    warnings = [line for line in log.splitlines() if "(instance_group count)" in line]
    assert len(warnings) == 1, log[-3000:]
    assert f"{HUGE_COUNT} workers asked for" in warnings[0], warnings
    assert f"using {MAX_WORKERS}, the limit" in warnings[0], warnings
    assert "Traceback" not in log, log[-5000:]
