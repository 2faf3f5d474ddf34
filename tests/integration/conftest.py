"""Shared fixtures for the end-to-end server tests.

One real dlserve server (``server``, in this process on free ports:
devtools.inprocess.InProcessServer) serves ``model_repo`` for the whole
session; tests that need other flags (explicit control, auth, a small message
limit, another repository) start their own, one per module, and those that
need a process of their own (the CLI, signals, workers, shutdown, the
process's memory or stderr) a ``devtools.serverproc.ServerProcess``.

``model_repo`` holds:

    classifier     MLP 2 -> 3 classes, max_batch_size 16, labels red/green/blue
    autocomplete   MLP 2 -> 2 classes, no config.pbtxt (completed from the graph)
    counted        MLP 2 -> 2 classes, only the statistics test sends to it
    fixed          MLP on a fixed [3, 2] input, max_batch_size 0 (no batching)
    delayed        MLP whose batcher waits up to 0.5 s for a batch of 8
    broken         a config.pbtxt next to a corrupt model.onnx

``default_server`` serves the five default models committed under models/.
The helpers (``build_repo``, request builders, ``rpc_error``) live in
helpers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest
import tritonclient.grpc as triton

from devtools.inprocess import InProcessServer
from serving._generated import grpc_service_pb2_grpc as pb_grpc
from tests.integration.helpers import DEFAULT_MODELS, DEFAULT_NAMES, build_repo
from tests.integration.http_helpers import Http


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(model_repo: Path) -> Iterator[InProcessServer]:
    # The session's servers live beside every other test of the process
    # (training loops hold the GIL for long stretches), so a stall of their
    # loop measures the test session, not the server: not checked, neither
    # per test nor at stop (docs/reliability.md). Every other test server is
    # watched, and a stall fails the test phase during which it happened.
    with InProcessServer(model_repo, allow_loop_stalls=True) as proc:
        yield proc


@pytest.fixture(scope="session")
def default_server() -> Iterator[InProcessServer]:
    """A server on the committed default models (read only)."""
    missing = [n for n in DEFAULT_NAMES if not (DEFAULT_MODELS / n / "config.pbtxt").is_file()]
    assert not missing, f"default models missing from {DEFAULT_MODELS}: {missing}"
    with InProcessServer(DEFAULT_MODELS, allow_loop_stalls=True) as proc:  # as above
        yield proc


@pytest.fixture(scope="session")
def client(server: InProcessServer) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture(scope="session")
def stub(server: InProcessServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    """Our own generated stub, for requests tritonclient refuses to build."""
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def api(server: InProcessServer) -> Iterator[Http]:
    """Raw HTTP to the REST port of ``server``: a module's own, where it
    defines one (test_http_api, test_http_control), else the session's."""
    client = Http(server.http_url)
    yield client
    client.close()
