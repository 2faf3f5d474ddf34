"""ModelStreamInfer backpressure against a real ``dlserve serve`` (probe
finding F1): a client that sends and never reads holds a bounded amount of
the server's memory, and the server goes on answering everyone else.

The stuck client streams ``tiled`` requests (1 KiB in, 1 MiB out) as fast as
the server takes them and reads nothing. Without a window the server reads
every request and keeps every answer: its RSS grows by hundreds of MiB a
second. With ``--stream-window`` (64 requests) and ``--stream-window-bytes``
(64 MiB) it stops reading, so the growth stays near the byte window. The
bound asserted is three times that window, well under what unbounded
buffering reaches within a second; the check stops early once it is passed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from devtools.serverproc import ServerProcess
from scripts import fuzz_batching as fb
from serving._generated import grpc_service_pb2_grpc as pb_grpc

WINDOW = 64  # the server's default --stream-window (requests)
WINDOW_BYTES = 64 * 1024 * 1024  # the server's default --stream-window-bytes
RSS_BOUND_KB = 3 * WINDOW_BYTES // 1024
TIMEOUT = 60


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.build_repo(tmp_path_factory.mktemp("backpressure-repo"))


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(server.url, options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def others_are_served(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Another client, on its own connection: unary and a short stream (of
    one width: test_batch_safety covers mixing them)."""
    fb.assert_every_model_answers(stub, {"tiled", "rowsum"})
    cases = [fb.valid_case("rowsum", 2, {"x": 3}, i) for i in range(20)]
    fb.stream_burst(stub, cases, fb.Tally())


@dataclass
class Held:
    """What holding a never-reading stream showed."""

    peak_kb: int  # peak server RSS growth
    sent: int  # requests grpc took from the client
    stalled: bool  # the server stopped taking requests (not the 20 s cap, not the RSS bound)
    over_limit: bool  # the client stopped at the RSS bound
    open: bool  # the stream was still open when the watch ended (not failed by the server)


def hold_stuck_stream(server: ServerProcess, **stream: Any) -> Held:
    """Open a never-reading stream (``stream``: more ``fb.StuckStream``
    arguments) and keep it pushing until the server has stopped taking its
    requests for 2 s (at most 20 s, or until the RSS bound is passed)."""
    pid = server.proc.pid  # type: ignore[union-attr]
    base = fb.rss_kb(pid)
    peak, last_sent, since, stalled = 0, -1, time.monotonic(), False
    stuck = fb.StuckStream(
        grpc.insecure_channel(server.url), server_pid=pid, max_growth_kb=RSS_BOUND_KB, **stream
    )  # it stops sending past the bound: an unbounded server cannot take the host's memory
    try:
        started = time.monotonic()
        while time.monotonic() - started < 20:
            time.sleep(0.25)
            peak = max(peak, fb.rss_kb(pid) - base)
            if peak > RSS_BOUND_KB or stuck.over_limit:
                break  # unbounded buffering: no need to watch it grow further
            if stuck.sent != last_sent:
                last_sent, since = stuck.sent, time.monotonic()
            elif time.monotonic() - since > 2 and time.monotonic() - started > 3:
                stalled = True
                break  # the server has stopped reading this stream
        return Held(peak, stuck.sent, stalled, stuck.over_limit, stuck.open)
    finally:
        stuck.close()


def test_a_client_that_never_reads_holds_bounded_memory(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    others_are_served(stub)  # warm: every model has run once
    held = hold_stuck_stream(server)
    assert held.peak_kb < RSS_BOUND_KB and not held.over_limit, (
        f"server RSS grew {held.peak_kb // 1024} MiB for one stream that never reads "
        f"({held.sent} requests taken), bound {RSS_BOUND_KB // 1024} MiB"
    )
    # Not vacuous: the stream pushed past the window (the server read a
    # window's worth, its answers unsent), stayed open, and then the server
    # stopped reading it, rather than the stream failing or the watch ending.
    assert held.sent > WINDOW, held
    assert held.open, held
    assert held.stalled, held
    others_are_served(stub)


def test_answer_ids_count_in_the_window_bytes(repo: Path) -> None:
    """Answers of 4 bytes (rowsum) whose ids are 100 KB each: the ids are all
    that waits unsent, so they must count in --stream-window-bytes (2 MiB
    here; the request count window is out of the way). Counting only
    tensors, the server read on until the client's RSS bound."""
    window_bytes = 2 * 1024 * 1024
    with ServerProcess(
        repo, "--stream-window", "100000", "--stream-window-bytes", str(window_bytes)
    ) as server:
        case = fb.valid_case("rowsum", 1, {"x": 1}, 0)
        held = hold_stuck_stream(server, case=case, request_id="i" * 100_000)
    assert held.stalled and held.open and not held.over_limit, held
    assert held.sent > window_bytes // 100_000, held  # it did fill the window


def test_others_are_served_while_streams_are_stuck(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """Two streams that never read, held open while another client runs
    unary requests and streams of its own: it gets every answer."""
    pid = server.proc.pid  # type: ignore[union-attr]
    stuck = [
        fb.StuckStream(
            grpc.insecure_channel(server.url), server_pid=pid, max_growth_kb=RSS_BOUND_KB
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 10
        while any(s.sent < 100 for s in stuck) and time.monotonic() < deadline:
            time.sleep(0.05)  # both have pushed past the window
        for _ in range(3):
            others_are_served(stub)
    finally:
        for s in stuck:
            s.close()
    others_are_served(stub)


def test_a_slow_reader_gets_every_answer_once(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """300 requests of 256 KiB answers (75 MiB: past the byte window) and a
    reader that pauses before each read: every request is answered exactly
    once, right, in whatever order."""
    cases = [fb.valid_case("tiled", 16, {}, seed) for seed in range(300)]
    tally = fb.Tally()
    fb.stream_burst(stub, cases, tally, pause_s=[0.002] * len(cases))
    assert tally.codes == {"OK": len(cases)}


def test_a_client_that_writes_everything_before_reading_is_answered(
    server: ServerProcess,
) -> None:
    """Half-duplex use of the stream (write all, close, then read) with
    small answers: the window must not deadlock it."""
    count = 3000

    async def client() -> set[str]:
        async with grpc.aio.insecure_channel(server.url) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=TIMEOUT)
            for i in range(count):
                await call.write(fb.valid_case("rowsum", 1, {"x": 4}, i).request(str(i)))
            await call.done_writing()
            ids = set()
            async for answer in call:
                assert not answer.error_message, answer.error_message
                ids.add(answer.infer_response.id)
            return ids

    assert asyncio.run(client()) == {str(i) for i in range(count)}


def test_the_window_flags_are_accepted(tmp_path: Path) -> None:
    """A tighter window (flags) still answers a stream longer than it."""
    repo = fb.build_repo(tmp_path / "repo")
    with ServerProcess(repo, "--stream-window", "2", "--stream-window-bytes", "65536") as proc:
        with grpc.insecure_channel(proc.url) as channel:
            cases = [fb.valid_case("tiled", 4, {}, seed) for seed in range(40)]
            tally = fb.Tally()
            fb.stream_burst(
                pb_grpc.GRPCInferenceServiceStub(channel), cases, tally, pause_s=[0.001] * 40
            )
            assert tally.codes == {"OK": 40}
