"""Hot reload with ``--model-control-mode poll``: a real ``dlserve serve``
rescans the repository every 0.2 s while the tests change it on disk.

New versions load and the old one unloads (version_policy latest 1),
removed versions unload, a changed config or label file reloads, a corrupt
or half-copied version never replaces the one serving (RepositoryIndex
says why), and requests in flight on a version being unloaded complete.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnx
import pytest

from devtools.onnx_models import mlp, slow_mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import expected, inflight, outputs, request

POLL = "0.2"
TIMEOUT = 60.0  # seconds to wait for a poll to take effect (a loaded machine is slow)


def add_version(repo: Path, name: str, version: int, model: onnx.ModelProto) -> None:
    """Copy a version in the way the docs recommend: write it aside, then
    rename it into place in one step."""
    staging = repo / name / f".staging-{version}"
    staging.mkdir()
    onnx.save(model, str(staging / "model.onnx"))
    os.rename(staging, repo / name / str(version))


def index(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[tuple[str, str], tuple[str, str]]:
    reply = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in reply.models}


def state(stub: pb_grpc.GRPCInferenceServiceStub, name: str, version: int) -> str | None:
    entry = index(stub).get((name, str(version)))
    return entry[0] if entry else None


def serving_version(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> str:
    """The version that answers a request without a version, or '' if none."""
    try:
        return stub.ModelInfer(
            request(name, np.zeros((1, 2), np.float32)), timeout=30
        ).model_version
    except grpc.RpcError:
        return ""


def infer(
    stub: pb_grpc.GRPCInferenceServiceStub, name: str, x: np.ndarray, version: str = ""
) -> tuple[str, dict[str, np.ndarray]]:
    reply = stub.ModelInfer(request(name, x, version), timeout=60)
    return reply.model_version, outputs(reply)


X = np.array([[0.5, -1.0], [2.0, 1.5], [-0.3, 0.1]], np.float32)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "model", model=mlp(seed=1))
    return tmp_path


@pytest.fixture
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(
        repo, "--model-control-mode", "poll", "--repository-poll-secs", POLL,
        "--inference-threads", "1",
    ) as proc:  # fmt: skip
        yield proc


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_versions_come_and_go(repo: Path, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    assert infer(stub, "model", X)[0] == "1"

    add_version(repo, "model", 2, mlp(seed=2))
    assert wait_for(lambda: serving_version(stub, "model") == "2", TIMEOUT), index(stub)
    version, got = infer(stub, "model", X)
    np.testing.assert_allclose(got["logits"], expected(2, X)["logits"], rtol=1e-6)
    # latest 1: version 1 was unloaded and says so.
    assert wait_for(lambda: state(stub, "model", 1) == "UNAVAILABLE", TIMEOUT), index(stub)
    with pytest.raises(grpc.RpcError) as info:
        infer(stub, "model", X, version="1")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    shutil.rmtree(repo / "model" / "2")
    assert wait_for(lambda: serving_version(stub, "model") == "1", TIMEOUT), index(stub)
    np.testing.assert_allclose(
        infer(stub, "model", X)[1]["logits"], expected(1, X)["logits"], rtol=1e-6
    )
    assert wait_for(lambda: state(stub, "model", 2) is None, TIMEOUT), index(stub)
    with pytest.raises(grpc.RpcError) as info:
        infer(stub, "model", X, version="2")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_new_and_removed_models(repo: Path, stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    staging = repo / ".staging-other"
    write_model(staging, "other", model=mlp(seed=3))
    os.rename(staging / "other", repo / "other")
    assert wait_for(lambda: serving_version(stub, "other") == "1", TIMEOUT), index(stub)
    np.testing.assert_allclose(
        infer(stub, "other", X)[1]["probabilities"], expected(3, X)["probabilities"], rtol=1e-6
    )

    shutil.rmtree(repo / "other")
    assert wait_for(lambda: ("other", "1") not in index(stub), TIMEOUT), index(stub)
    with pytest.raises(grpc.RpcError) as info:
        infer(stub, "other", X)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert infer(stub, "model", X)[0] == "1"  # the other model never noticed


def classes(stub: pb_grpc.GRPCInferenceServiceStub) -> list[bytes]:
    r = request("model", X[:1])
    out = r.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 2
    raw = stub.ModelInfer(r, timeout=30).raw_output_contents[0]
    labels, offset = [], 0
    while offset < len(raw):
        n = int.from_bytes(raw[offset : offset + 4], "little")
        labels.append(raw[offset + 4 : offset + 4 + n].split(b":")[-1])
        offset += 4 + n
    return sorted(labels)


def test_changed_config_and_labels_reload(
    repo: Path, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    assert classes(stub) == [b"class0", b"class1"]
    (repo / "model" / "labels.txt").write_text("left\nright\n")
    assert wait_for(lambda: classes(stub) == [b"left", b"right"], TIMEOUT)

    config = repo / "model" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: 2"))

    def max_batch() -> int:
        reply = stub.ModelConfig(pb.ModelConfigRequest(name="model"), timeout=30)
        return int(reply.config.max_batch_size)

    assert wait_for(lambda: max_batch() == 2, TIMEOUT)
    with pytest.raises(grpc.RpcError) as info:
        infer(stub, "model", X)  # 3 rows > the new max_batch_size
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A config that does not parse never takes the model down.
    config.write_text("max_batch_size: [this is not protobuf text")
    assert wait_for(lambda: "not a valid ModelConfig" in index(stub)[("model", "1")][1], TIMEOUT), (
        index(stub)
    )
    assert infer(stub, "model", X[:2])[0] == "1"
    assert index(stub)[("model", "1")][0] == "READY"


def test_corrupt_or_half_copied_version_never_replaces_the_serving_one(
    repo: Path, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    (repo / "model" / "2").mkdir()
    (repo / "model" / "2" / "model.onnx").write_bytes(b"\x08\x07 not an onnx model at all")
    assert wait_for(lambda: state(stub, "model", 2) == "UNAVAILABLE", TIMEOUT), index(stub)
    assert "cannot load" in index(stub)[("model", "2")][1], index(stub)
    assert infer(stub, "model", X)[0] == "1"
    assert state(stub, "model", 1) == "READY"

    # A copy caught half-way: the first half of a good file.
    good = mlp(seed=4).SerializeToString()
    target = repo / "model" / "3" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(good[: len(good) // 2])
    assert wait_for(lambda: state(stub, "model", 3) == "UNAVAILABLE", TIMEOUT), index(stub)
    assert infer(stub, "model", X)[0] == "1"
    assert state(stub, "model", 1) == "READY"

    # The copy completes: now version 3 takes over.
    target.write_bytes(good)
    assert wait_for(lambda: serving_version(stub, "model") == "3", TIMEOUT), index(stub)
    np.testing.assert_allclose(
        infer(stub, "model", X)[1]["logits"], expected(4, X)["logits"], rtol=1e-6
    )
    assert wait_for(lambda: state(stub, "model", 1) == "UNAVAILABLE", TIMEOUT), index(stub)


def test_requests_in_flight_on_an_unloading_version_complete(tmp_path: Path) -> None:
    write_model(tmp_path, "model", model=slow_mlp(seed=5, matmuls=100), dynamic_batching=False)
    with ServerProcess(
        tmp_path, "--model-control-mode", "poll", "--repository-poll-secs", POLL,
        "--inference-threads", "1",
    ) as server, grpc.insecure_channel(server.url) as channel:  # fmt: skip
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        xs = [np.full((1, 2), i, np.float32) for i in range(8)]
        futures: list[Future[pb.ModelInferResponse]] = [
            stub.ModelInfer.future(request("model", x), timeout=300) for x in xs
        ]
        assert wait_for(lambda: inflight(server, "model") >= 8, TIMEOUT)
        add_version(tmp_path, "model", 2, mlp(seed=6))  # replaces version 1 while it works
        for x, future in zip(xs, futures, strict=True):
            reply = future.result()
            assert reply.model_version == "1"
            np.testing.assert_array_equal(outputs(reply)["logits"], expected(5, x)["logits"])
        assert wait_for(lambda: serving_version(stub, "model") == "2", TIMEOUT)
        assert "model:1 unloaded" in server.log()


def test_corrupt_bytes_over_the_serving_file_keep_the_old_load(
    repo: Path, server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """The serving version's own file is overwritten with garbage: the loaded
    session keeps answering, the index says why, and the same bad bytes are
    not retried on every poll."""
    (repo / "model" / "1" / "model.onnx").write_bytes(b"\x08\x07 garbage in place")
    assert wait_for(lambda: "reload failed" in index(stub)[("model", "1")][1], TIMEOUT), index(stub)
    assert index(stub)[("model", "1")][0] == "READY"
    np.testing.assert_allclose(
        infer(stub, "model", X)[1]["logits"], expected(1, X)["logits"], rtol=1e-6
    )
    polls = server.log().count("model model:1 failed to load")
    # Wait for at least five more polls (each logs nothing new if all is well).
    marker = len(server.log())
    for _ in range(5):
        stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        wait_for(lambda: False, timeout=float(POLL))
    assert server.log().count("model model:1 failed to load") == polls == 1, server.log()[marker:]
    # Good bytes again (a new file): they load.
    onnx.save(mlp(seed=7), str(repo / "model" / "1" / "model.onnx"))
    assert wait_for(
        lambda: np.allclose(infer(stub, "model", X)[1]["logits"], expected(7, X)["logits"]), TIMEOUT
    )
    assert index(stub)[("model", "1")] == ("READY", "")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_reloads_free_the_retired_sessions(tmp_path: Path) -> None:
    """Probe F3: each reload of a 32 MiB model used to keep the old session
    until the cyclic GC ran (+47 MB RSS per reload of a 48 MB model); ten
    reloads must not keep ten sessions."""
    repo = tmp_path / "models"
    wide = 4096  # 2 x 4096 x 1024 floats: a 32 MiB first layer
    write_model(repo, "big", model=mlp(features=wide, hidden=(2048,), seed=1))
    with ServerProcess(repo, "--model-control-mode", "explicit", "--load-model", "big") as server:
        assert server.proc is not None
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            x = np.ones((1, wide), np.float32)
            stub.ModelInfer(request("big", x), timeout=60)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="big"), timeout=60)
            stub.ModelInfer(request("big", x), timeout=60)
            before = rss_mib(server.proc.pid)
            for _ in range(10):
                stub.RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="big"), timeout=60
                )
                stub.ModelInfer(request("big", x), timeout=60)
            after = rss_mib(server.proc.pid)
    model_mib = 2 * wide * 2048 * 4 / 2**20
    assert after - before < 3 * model_mib, (before, after)
