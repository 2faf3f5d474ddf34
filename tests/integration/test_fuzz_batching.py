"""Property-based fuzzing where the adversarial probe went (F1, F2), against
a real ``dlserve serve``: concurrent bursts of requests of random shapes and
optional-input subsets to models whose config dims are -1 and that wait
20 ms for company, so requests that must not share a batch meet in one
batcher; the bursts go as unary calls and on streams read at random paces,
while two streams that never read are held open the whole time.

Every request must be answered: a valid one with its exact value, a broken
one with INVALID_ARGUMENT (a model that failed to load: UNAVAILABLE). At the
end every model answers a plain request (no dead batcher worker), the
server's RSS has grown by a bounded amount, and its log holds no traceback
(beyond grpc's note on a cancelled stream's pending write) and no event-loop
stall. At least ``MIN_REQUESTS`` requests a run; ``scripts/fuzz_batching.py``
runs the same generators as long as you like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devtools.serverproc import ServerProcess
from scripts import fuzz_batching as fb
from serving._generated import grpc_service_pb2_grpc as pb_grpc

MIN_REQUESTS = 2000
BURST = 24  # requests per Hypothesis example
EXAMPLES = MIN_REQUESTS // BURST + 6
STUCK_STREAMS = 2
#: Each stuck stream may hold its 64 MiB answer window, plus room for the rest.
RSS_GROWTH_BOUND_KB = (STUCK_STREAMS * 64 + 192) * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = fb.build_repo(tmp_path_factory.mktemp("fuzz-batching-repo"))
    with ServerProcess(repo) as proc:
        yield proc


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_bursts_of_random_shapes_are_all_answered_and_no_worker_dies(
    server: ServerProcess, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    ready = fb.ready_models(stub)
    assert ready >= {"rowsum", "rowsum-multi", "pair", "needsbias"}, server.log()[-3000:]
    fb.assert_every_model_answers(stub, ready)
    pid = server.proc.pid  # type: ignore[union-attr]
    base_kb = fb.rss_kb(pid)
    peak_kb = base_kb
    tally = fb.Tally()
    stuck = [
        fb.StuckStream(
            grpc.insecure_channel(server.url), server_pid=pid, max_growth_kb=RSS_GROWTH_BOUND_KB
        )
        for _ in range(STUCK_STREAMS)
    ]

    # No shrinking: the server's state outlives an example (a dead worker
    # fails every later burst), and each burst can take REQUEST_TIMEOUT.
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
    )  # fmt: skip
    @given(
        st.lists(fb.cases(), min_size=BURST, max_size=BURST),
        st.sampled_from(["unary", "unary", "stream", "slow stream"]),
        st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005]), max_size=BURST),
    )
    def burst(cases: list[fb.Case], how: str, pauses: list[float]) -> None:
        nonlocal peak_kb
        cases = [fb.expect_unready(c, ready) for c in cases]
        if how == "unary":
            fb.unary_burst(stub, cases, tally)
        else:
            fb.stream_burst(stub, cases, tally, pauses if how == "slow stream" else ())
        peak_kb = max(peak_kb, fb.rss_kb(pid))

    try:
        burst()
        assert all(s.sent > 0 for s in stuck)
        assert not any(s.over_limit for s in stuck), (
            f"streams that never read grew the server's RSS past {RSS_GROWTH_BOUND_KB // 1024} MiB"
        )
    finally:
        for s in stuck:
            s.close()
    assert tally.total >= MIN_REQUESTS, tally
    assert tally.streamed > 0 and tally.codes["OK"] > MIN_REQUESTS // 3, tally
    fb.assert_every_model_answers(stub, ready)
    growth = peak_kb - base_kb
    assert growth < RSS_GROWTH_BOUND_KB, (
        f"server RSS grew {growth // 1024} MiB (bound {RSS_GROWTH_BOUND_KB // 1024} MiB) "
        f"with {STUCK_STREAMS} streams that never read"
    )
    problems, _ = fb.log_problems(server.log())
    assert not problems, problems


def test_the_generators_reach_every_kind_of_case() -> None:
    """The oracle's categories all occur (a generator change cannot quietly
    stop producing the cases that matter)."""
    seen: set[str] = set()
    widths: set[int] = set()

    @settings(max_examples=400, deadline=None, database=None)
    @given(fb.cases())
    def draw(case: fb.Case) -> None:
        seen.add(case.why)
        if case.why == "valid" and case.tensors:
            widths.add(case.tensors[0][2][1])

    draw()
    assert {"valid", "optional, no default"} <= seen, seen
    assert len(seen & set(fb.MUTATIONS)) >= len(fb.MUTATIONS) // 2, seen
    assert len(widths) >= 4, widths


def test_the_long_run_script_imports_no_test_module() -> None:
    script = Path(fb.__file__).read_text()
    assert "from tests" not in script and "import tests" not in script
