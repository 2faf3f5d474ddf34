"""Odd repository content against a real ``dlserve serve``: names that are
not UTF-8, a label file that is a FIFO or not named ``*.txt``, and a model
file replaced by one of the same size with its mtime kept.

Polling servers rescan every 0.2 s. "A poll has happened since X" is shown
by a change made after X being picked up (a new version starts serving),
never by sleeping. The manager's poll asks ``serving.changes.ChangeTracker``
what changed: stat first, content digests of changed files only.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerFailed, ServerProcess, wait_for
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc

POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2")
TIMEOUT = 30.0  # seconds for a poll to take effect on a loaded machine
X = np.array([[0.5, -1.0], [2.0, 1.5], [-0.3, 0.1]], np.float32)


def raw_path(folder: Path, name: bytes) -> bytes:
    return os.fsencode(folder) + b"/" + name


def expected(seed: int) -> np.ndarray:
    session = ort.InferenceSession(
        mlp(seed=seed).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(["logits"], {"input": X})[0])


def infer(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> tuple[str, np.ndarray]:
    """(version that answered, logits) for X."""
    r = pb.ModelInferRequest(model_name=name)
    r.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    r.raw_input_contents.append(X.tobytes())
    r.outputs.add(name="logits")
    reply = stub.ModelInfer(r, timeout=30)
    logits = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(X.shape[0], -1)
    return reply.model_version, logits


def serving_version(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> str:
    try:
        return infer(stub, name)[0]
    except grpc.RpcError:
        return ""


def index(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[tuple[str, str], tuple[str, str]]:
    reply = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    return {(m.name, m.version): (m.state, m.reason) for m in reply.models}


def classes(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> list[bytes]:
    """The labels of the top 2 classes of X's first row, sorted."""
    r = pb.ModelInferRequest(model_name=name)
    r.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    r.raw_input_contents.append(X[:1].tobytes())
    out = r.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 2
    raw = stub.ModelInfer(r, timeout=30).raw_output_contents[0]
    labels, offset = [], 0
    while offset < len(raw):
        n = int.from_bytes(raw[offset : offset + 4], "little")
        labels.append(raw[offset + 4 : offset + 4 + n].split(b":")[-1])
        offset += 4 + n
    return sorted(labels)


def add_version(repo: Path, name: str, version: int, seed: int) -> None:
    """A new version, renamed into place in one step."""
    staging = repo / name / f".staging-{version}"
    staging.mkdir()
    onnx.save(mlp(seed=seed), str(staging / "model.onnx"))
    os.rename(staging, repo / name / str(version))


def a_poll_has_happened(repo: Path, stub: pb_grpc.GRPCInferenceServiceStub, version: int) -> bool:
    """Add ``model`` version ``version`` and wait until it serves."""
    add_version(repo, "model", version, seed=version)
    return wait_for(lambda: serving_version(stub, "model") == str(version), TIMEOUT)


def metrics_status(server: ServerProcess) -> int:
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10) as reply:
        return int(reply.status)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    write_model(tmp_path, "model", model=mlp(seed=1))
    return tmp_path


@pytest.fixture
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo, *POLL, "--inference-threads", "1", ready_timeout=TIMEOUT) as proc:
        yield proc


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


# --- F6: a model folder whose name is not UTF-8 ------------------------------------------


def test_folder_name_not_utf8_is_skipped(tmp_path: Path) -> None:
    write_model(tmp_path, "model", model=mlp(seed=1))
    write_model(tmp_path, os.fsdecode(b"bad\xff"), model=mlp(seed=2), config=None)
    with (
        ServerProcess(tmp_path, *POLL, ready_timeout=TIMEOUT) as server,
        grpc.insecure_channel(server.url) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert set(index(stub)) == {("model", "1")}
        assert metrics_status(server) == 200
        # One that appears while polling is skipped as well.
        write_model(tmp_path, os.fsdecode(b"late\xfe"), model=mlp(seed=3), config=None)
        assert a_poll_has_happened(tmp_path, stub, 2), index(stub)
        assert set(index(stub)) == {("model", "1"), ("model", "2")}
        assert metrics_status(server) == 200
        log = server.log()
    assert log.count("skipping model folder") == 2, log  # once each, not once per poll


# --- F7: a *.txt file whose name is not UTF-8 inside a model folder ----------------------


def test_txt_name_not_utf8_does_not_stop_the_server(repo: Path) -> None:
    os.close(os.open(raw_path(repo / "model", b"notes\xff.txt"), os.O_CREAT | os.O_WRONLY))
    try:
        with (
            ServerProcess(repo, ready_timeout=TIMEOUT) as server,
            grpc.insecure_channel(server.url) as channel,
        ):
            assert infer(pb_grpc.GRPCInferenceServiceStub(channel), "model")[0] == "1"
    except ServerFailed as exc:
        pytest.fail(f"the server did not start: {str(exc)[-2000:]}")


def test_txt_name_not_utf8_does_not_stop_polling(
    repo: Path, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    os.close(os.open(raw_path(repo / "model", b"notes\xff.txt"), os.O_CREAT | os.O_WRONLY))
    assert a_poll_has_happened(repo, stub, 2), index(stub)


# --- F8: a label file not named *.txt --------------------------------------------------


def test_label_file_not_named_txt_is_reread(tmp_path: Path) -> None:
    config = config_text("model").replace('"labels.txt"', '"classes.names"')
    write_model(tmp_path, "model", model=mlp(seed=1), config=config)
    (tmp_path / "model" / "classes.names").write_text("cat\ndog\n")
    with (
        ServerProcess(tmp_path, *POLL, ready_timeout=TIMEOUT) as server,
        grpc.insecure_channel(server.url) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert classes(stub, "model") == [b"cat", b"dog"]
        (tmp_path / "model" / "classes.names").write_text("left\nright\n")
        assert wait_for(lambda: classes(stub, "model") == [b"left", b"right"], TIMEOUT)


# --- F9: a FIFO as label file ----------------------------------------------------------


def test_fifo_label_file_fails_that_model_only(tmp_path: Path) -> None:
    write_model(tmp_path, "model", model=mlp(seed=1))
    write_model(tmp_path, "fifo", model=mlp(seed=2))
    os.remove(tmp_path / "fifo" / "labels.txt")
    os.mkfifo(tmp_path / "fifo" / "labels.txt")
    server = ServerProcess(tmp_path, *POLL, ready_timeout=TIMEOUT)
    try:
        server.start()
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            state, reason = index(stub)[("fifo", "1")]
            assert state == "UNAVAILABLE"
            assert "labels 'labels.txt': it is a FIFO, not a regular file" in reason, reason
            assert infer(stub, "model")[0] == "1"
            assert a_poll_has_happened(tmp_path, stub, 2), index(stub)  # polls go on
        assert server.stop(signal.SIGTERM, timeout=TIMEOUT) == 0
    finally:
        server.kill()
        if server.log_path is not None:
            server.log_path.unlink(missing_ok=True)


# --- F21: a same-size replacement of model.onnx that keeps the mtime -------------------


@pytest.mark.parametrize("in_place", [True, False], ids=["cp-p-in-place", "rsync-t-rename"])
def test_same_size_same_mtime_model_is_loaded(
    repo: Path, stub: pb_grpc.GRPCInferenceServiceStub, in_place: bool
) -> None:
    np.testing.assert_allclose(infer(stub, "model")[1], expected(1), rtol=1e-6)
    target = repo / "model" / "1" / "model.onnx"
    old = target.stat()
    retrained = mlp(seed=5).SerializeToString()
    assert len(retrained) == old.st_size
    if in_place:  # cp -p: the same inode, rewritten, the mtime set back
        with open(target, "r+b") as f:
            f.write(retrained)
        os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    else:  # rsync -t: a new file with the old mtime, renamed over the old one
        aside = repo / "model" / "1" / ".model.onnx.tmp"
        aside.write_bytes(retrained)
        os.utime(aside, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.rename(aside, target)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)

    def retrained_serves() -> bool:
        return bool(np.allclose(infer(stub, "model")[1], expected(5), rtol=1e-6))

    assert wait_for(retrained_serves, TIMEOUT)
