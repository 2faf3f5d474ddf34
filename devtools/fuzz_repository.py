"""Hypothesis-generated model folders for a polling server, and the checks
made while a client sends traffic: ``tests/integration/test_fuzz_repository.py``
runs them briefly, ``scripts/fuzz_ports.py --target repository`` for long.

Each example is one folder: a valid model or a broken one (garbage ONNX
bytes, a garbage or contradictory config), plus junk beside it (file names
that are not UTF-8, FIFOs, folders and big sparse files where labels are
expected, notes files). The server must mark a valid folder READY and a
broken one not ready with a reason, never the reverse; a sentinel model
keeps answering every request of a client thread throughout; and the loop
watchdog (on in every ServerProcess) must not see a stall over 100 ms.

A poll is known to have run after a change when a version published after
it serves (never by sleeping).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
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


NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)


def build_repo(repo: Path) -> Path:
    """The models every run starts with: "sentinel" (the traffic's) and
    "clock" (whose published versions tell that a poll has run)."""
    write_model(repo, "sentinel", model=mlp(seed=1))
    write_model(repo, "clock", model=mlp(seed=2))
    return repo


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


def check_folder(
    server: ServerProcess, repo: Path, broken: str, junk: list[str], payload: bytes, name: str
) -> None:
    """Drop one generated folder into ``repo`` while a client sends traffic,
    check its readiness, remove it, and check the traffic and the loop."""
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
