"""Hypothesis-generated model folders dropped into a polling server's
repository while traffic flows (issue 17: where the probe went).

Each example is one folder: a valid model or a broken one (garbage ONNX
bytes, a garbage or contradictory config), plus junk beside it (file names
that are not UTF-8, FIFOs, folders and big sparse files where labels are
expected, notes files). The server must mark a valid folder READY and a
broken one not ready with a reason, never the reverse; a sentinel model
keeps answering every request of a client thread throughout; and the loop
watchdog (on in every test server) must not see a stall over 100 ms.

A poll is known to have run after a change when a version published after
it serves (never by sleeping). Also: a version published every poll does
not grow /metrics (probe F15).
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc

POLL = ("--model-control-mode", "poll", "--repository-poll-secs", "0.1")
TIMEOUT = 30.0
X = np.array([[0.5, -1.0]], np.float32)


def infer(stub: pb_grpc.GRPCInferenceServiceStub, name: str) -> str:
    r = pb.ModelInferRequest(model_name=name)
    r.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    r.raw_input_contents.append(X.tobytes())
    return str(stub.ModelInfer(r, timeout=30).model_version)


def states(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30).models:
        out.setdefault(m.name, []).append((m.state, m.reason))
    return out


class Traffic(threading.Thread):
    """Requests to the sentinel model for as long as the test runs; any
    error is kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self.stop.is_set():
                try:
                    infer(stub, "sentinel")
                    self.ok += 1
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code()}: {exc.details()}")


@pytest.fixture(scope="module")
def polling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = tmp_path_factory.mktemp("fuzzrepo")
    write_model(repo, "sentinel", model=mlp(seed=1))
    write_model(repo, "clock", model=mlp(seed=2))
    with ServerProcess(repo, *POLL) as server:
        yield server, repo


def poll_happened(stub: pb_grpc.GRPCInferenceServiceStub, repo: Path) -> None:
    """Every change made before this call has been seen by a whole poll: a
    poll that was already scanning may see a change half-way (a folder
    listed, then gone), so two new versions of "clock" must serve in turn."""
    publish(stub, repo)
    publish(stub, repo)


def publish(stub: pb_grpc.GRPCInferenceServiceStub, repo: Path) -> None:
    """A new version of "clock", and wait until it serves."""
    folder = repo / "clock"
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    new = versions[-1] + 1
    staging = folder / f".new-{new}"
    shutil.copytree(folder / str(versions[-1]), staging)
    staging.rename(folder / str(new))

    def serves() -> bool:
        try:
            return infer(stub, "clock") == str(new)
        except grpc.RpcError:
            return False

    assert wait_for(serves, TIMEOUT), f"clock version {new} did not start serving"


JUNK = st.sampled_from(["bad-utf8", "fifo", "dir-labels", "sparse", "notes", "none"])
BROKEN = st.sampled_from(["no", "garbage-onnx", "garbage-config", "wrong-dims", "fifo-labels"])


def build(folder: Path, broken: str, junk: list[str], payload: bytes) -> None:
    config = config_text(folder.name)
    model = mlp(seed=3).SerializeToString()
    if broken == "garbage-onnx":
        model = payload or b"\x00"
    if broken == "garbage-config":
        config = "name: { nope " + payload.decode("latin-1")
    if broken == "wrong-dims":
        config = config.replace("dims: [ 2 ]", "dims: [ 5 ]")
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(model)
    (folder / "config.pbtxt").write_text(config, encoding="latin-1")
    if broken == "fifo-labels":
        os.mkfifo(folder / "labels.txt")
    else:
        (folder / "labels.txt").write_text("a\nb\n")
    for kind in junk:
        if kind == "bad-utf8":
            open(os.fsencode(folder) + b"/odd\xff.txt", "wb").write(payload)
        elif kind == "fifo":
            os.mkfifo(folder / "pipe.txt")
        elif kind == "dir-labels":
            (folder / "other.names").mkdir(exist_ok=True)
        elif kind == "sparse":
            with open(folder / "huge.txt", "wb") as f:
                f.truncate(64 * 1024 * 1024)
        elif kind == "notes":
            (folder / "notes.txt").write_bytes(payload * 100)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    broken=BROKEN,
    junk=st.lists(JUNK, max_size=4, unique=True),
    payload=st.binary(max_size=64),
    name=st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
)
def test_generated_folders_get_the_right_readiness_while_traffic_flows(
    polling: tuple[ServerProcess, Path], broken: str, junk: list[str], payload: bytes, name: str
) -> None:
    server, repo = polling
    if name in ("sentinel", "clock"):
        name = f"m-{name}"
    folder = repo / name
    traffic = Traffic(server.url)
    traffic.start()
    try:
        with grpc.insecure_channel(server.url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            build(folder, broken, junk, payload)
            poll_happened(stub, repo)
            rows = states(stub).get(name)
            assert rows, f"{name} is not in the index"
            ready = any(state == "READY" for state, _ in rows)
            if broken == "no":
                assert ready, rows
                assert infer(stub, name) == "1"
            else:
                assert not ready, rows
                assert all(reason for _, reason in rows), rows
            shutil.rmtree(folder)
            poll_happened(stub, repo)
            assert name not in states(stub)
    finally:
        traffic.stop.set()
        traffic.join(30)
        if folder.exists():
            shutil.rmtree(folder)
    assert not traffic.errors, traffic.errors[:5]
    assert traffic.ok > 0
    assert not server.loop_stalls(), server.loop_stalls()


def test_published_versions_do_not_grow_the_metrics(
    polling: tuple[ServerProcess, Path],
) -> None:
    """Probe F15: the series of a retired version leave the registry."""
    server, repo = polling

    def series() -> list[str]:
        with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=30) as r:
            text = r.read().decode()
        return [line for line in text.splitlines() if 'model="clock"' in line]

    with grpc.insecure_channel(server.url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        poll_happened(stub, repo)
        infer(stub, "clock")
        before = series()
        versions = {
            line.split('version="')[1].split('"')[0] for line in before if "version=" in line
        }
        assert len(versions) == 1, versions  # only the serving version has series
        for _ in range(5):
            poll_happened(stub, repo)
            infer(stub, "clock")
        after = series()
    assert len(after) == len(before)
    assert {
        line.split('version="')[1].split('"')[0] for line in after if "version=" in line
    } != versions
