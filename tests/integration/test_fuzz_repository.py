"""Hypothesis-generated model folders dropped into a polling server's
repository while traffic flows (issue 17: where the probe went).

The folders and the checks made for each are ``devtools/fuzz_repository.py``'s
(its docstring says what is generated and what must hold); here they run
40 examples against one polling server.

A poll is known to have run after a change when a version published after
it serves (never by sleeping). The generators and the check are
devtools/fuzz_repository.py's, which ``scripts/fuzz_ports.py --target
repository`` runs for longer. Also: a version published every poll does
not grow /metrics (probe F15).
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.fuzz_repository import (
    BROKEN,
    JUNK,
    NAMES,
    POLL,
    build_repo,
    check_folder,
    infer,
    poll_happened,
)
from devtools.serverproc import ServerProcess
from serving._generated import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def polling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    repo = build_repo(tmp_path_factory.mktemp("fuzzrepo"))
    with ServerProcess(repo, *POLL) as server:
        yield server, repo


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    broken=BROKEN,
    junk=st.lists(JUNK, max_size=4, unique=True),
    payload=st.binary(max_size=64),
    name=NAMES,
)
def test_generated_folders_get_the_right_readiness_while_traffic_flows(
    polling: tuple[ServerProcess, Path], broken: str, junk: list[str], payload: bytes, name: str
) -> None:
    server, repo = polling
    check_folder(server, repo, broken, junk, payload, name)


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
