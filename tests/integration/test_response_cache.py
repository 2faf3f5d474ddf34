"""The response cache on a real server (``--cache-config local,size=N``),
driven by tritonclient.grpc (unary and stream) and tritonclient.http: a
repeated request is answered from the cache with onnxruntime's answer, hits
and misses are counted exactly in ModelStatistics (both transports) and
/metrics, the requested outputs are part of the key, a model without
``response_cache`` never caches, a reload never serves the previous load's
answers, a small budget evicts least recently used answers, and a model that
asks for the cache on a server without one serves and says so once."""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from devtools.inprocess import InProcessServer
from devtools.onnx_models import config_text, mlp, write_model
from devtools.serverproc import run_cli
from tests.integration.cache_helpers import (
    CACHED,
    ENABLE,
    UNCACHED,
    CacheCounts,
    batch,
    build_repo,
    entry_bytes,
    grpc_counts,
    http_counts,
    metric,
    scrape,
)
from tests.integration.helpers import infer_input, model_file, reference
from tests.integration.perf_helpers import find_perf_analyzer

RELOADED = "reloaded"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_repo(tmp_path_factory.mktemp("cache"))
    write_model(root, RELOADED, model=mlp(seed=10), config=config_text(RELOADED) + ENABLE)
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repo, "--cache-config", "local,size=1048576", "--model-control-mode",
                         "explicit", "--load-model", "*") as srv:  # fmt: skip
        yield srv


@pytest.fixture()
def client(server: InProcessServer) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


@pytest.fixture()
def hclient(server: InProcessServer) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


def delta(after: CacheCounts, before: CacheCounts) -> CacheCounts:
    return CacheCounts(*(a - b for a, b in zip(vars(after).values(), vars(before).values(),
                                                strict=True)))  # fmt: skip


def test_a_repeated_request_is_a_hit_over_grpc_and_http_with_onnxruntimes_answer(
    server: InProcessServer,
    client: grpcclient.InferenceServerClient,
    hclient: httpclient.InferenceServerClient,
) -> None:
    x = batch(seed=1)
    want = reference(model_file(server.repository, CACHED), x)
    before, scraped = grpc_counts(client, CACHED), scrape(server.metrics_url)
    first = client.infer(CACHED, [infer_input(x)])
    second = client.infer(CACHED, [infer_input(x)])
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    third = hclient.infer(CACHED, [tensor])
    for answer in (first, second, third):
        for name in ("logits", "probabilities"):
            np.testing.assert_allclose(answer.as_numpy(name), want[name], rtol=1e-5)
    np.testing.assert_array_equal(second.as_numpy("logits"), first.as_numpy("logits"))
    assert second.get_response().model_version == "1"
    # One miss ran the model (4 rows, one execution); two hits did not.
    assert delta(grpc_counts(client, CACHED), before) == CacheCounts(
        hits=2, misses=1, success=3, inference_count=4, execution_count=1
    )
    assert http_counts(hclient, CACHED) == grpc_counts(client, CACHED)
    after = scrape(server.metrics_url)
    for name, change in (("dlserve_cache_hits_total", 2), ("dlserve_cache_misses_total", 1)):
        old = metric(scraped, name, model=CACHED, version="1") or 0.0
        assert metric(after, name, model=CACHED, version="1") == old + change
    ok = metric(after, "dlserve_requests_total", model=CACHED, version="1", code="OK")
    assert ok == (metric(scraped, "dlserve_requests_total", model=CACHED, version="1",
                         code="OK") or 0.0) + 3  # fmt: skip
    (stats,) = client.get_inference_statistics(CACHED).model_stats
    assert stats.inference_stats.cache_hit.ns > 0 and stats.inference_stats.cache_miss.ns > 0


def test_the_requested_outputs_are_part_of_the_key(
    server: InProcessServer, client: grpcclient.InferenceServerClient
) -> None:
    x = batch(seed=2)
    want = reference(model_file(server.repository, CACHED), x)
    before = grpc_counts(client, CACHED)
    client.infer(CACHED, [infer_input(x)])  # miss: both outputs
    only = [grpcclient.InferRequestedOutput("probabilities")]
    for _ in range(2):  # miss, then hit: one output
        answer = client.infer(CACHED, [infer_input(x)], outputs=only)
        assert answer.as_numpy("logits") is None
        np.testing.assert_allclose(answer.as_numpy("probabilities"), want["probabilities"],
                                   rtol=1e-5)  # fmt: skip
    top = [grpcclient.InferRequestedOutput("probabilities", class_count=1)]
    classes = client.infer(CACHED, [infer_input(x)], outputs=top).as_numpy("probabilities")
    assert classes.shape == (4, 1) and all(b":class" in c for c in classes.flat)
    got = delta(grpc_counts(client, CACHED), before)
    assert (got.hits, got.misses, got.execution_count) == (1, 3, 3)


def test_a_stream_request_is_answered_from_the_cache_too(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = batch(seed=3)
    answers: queue.Queue[object] = queue.Queue()
    before = grpc_counts(client, CACHED)
    client.start_stream(callback=lambda result, error: answers.put(error or result))
    try:
        results = []
        for _ in range(2):  # one after the other: the second finds the first's answer
            client.async_stream_infer(CACHED, [infer_input(x)])
            results.append(answers.get(timeout=30))
    finally:
        client.stop_stream()
    assert all(isinstance(r, grpcclient.InferResult) for r in results), results
    first, second = (r.as_numpy("logits") for r in results)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(first, second)
    got = delta(grpc_counts(client, CACHED), before)
    assert (got.hits, got.misses, got.execution_count) == (1, 1, 1)


def test_a_model_without_response_cache_never_caches(
    server: InProcessServer, client: grpcclient.InferenceServerClient
) -> None:
    x = batch(seed=4)
    before = grpc_counts(client, UNCACHED)
    for _ in range(3):
        client.infer(UNCACHED, [infer_input(x)])
    got = delta(grpc_counts(client, UNCACHED), before)
    assert got == CacheCounts(hits=0, misses=0, success=3, inference_count=12, execution_count=3)
    scraped = scrape(server.metrics_url)
    assert metric(scraped, "dlserve_cache_hits_total", model=UNCACHED, version="1") is None
    assert metric(scraped, "dlserve_cache_misses_total", model=UNCACHED, version="1") is None


def test_a_reloaded_version_never_serves_the_previous_loads_answers(
    server: InProcessServer, client: grpcclient.InferenceServerClient, tmp_path: Path
) -> None:
    x = batch(seed=5)
    path = model_file(server.repository, RELOADED)
    old = reference(path, x)["logits"]
    client.infer(RELOADED, [infer_input(x)])
    hit = client.infer(RELOADED, [infer_input(x)]).as_numpy("logits")
    np.testing.assert_allclose(hit, old, rtol=1e-5)
    entries = metric(scrape(server.metrics_url), "dlserve_cache_entries")
    replacement = tmp_path / "model.onnx"  # other weights, same signature
    onnx.save(mlp(seed=99), str(replacement))
    shutil.copy(replacement, path.with_name("staged.onnx"))
    shutil.move(path.with_name("staged.onnx"), path)
    client.load_model(RELOADED)  # explicit mode: version 1 loads again, with a new token
    # The previous load's one answer left the cache as it retired (the other
    # models' answers stay).
    assert metric(scrape(server.metrics_url), "dlserve_cache_entries") == (entries or 0) - 1
    before = grpc_counts(client, RELOADED)
    new = client.infer(RELOADED, [infer_input(x)]).as_numpy("logits")
    np.testing.assert_allclose(new, reference(replacement, x)["logits"], rtol=1e-5)
    assert not np.allclose(new, old)
    assert delta(grpc_counts(client, RELOADED), before).misses == 1


def test_a_small_budget_evicts_the_least_recently_used_answers(tmp_path: Path) -> None:
    one = entry_bytes(rows=1)
    size = 2 * one + one // 2  # two answers fit, three do not
    with InProcessServer(build_repo(tmp_path), "--cache-config", f"local,size={size}") as srv:
        client = grpcclient.InferenceServerClient(srv.url)
        a, b, c = (batch(seed=s, rows=1) for s in (11, 12, 13))
        # a, b miss; a hits; c misses and evicts b; b misses and evicts a; c hits.
        for x in (a, b, a, c, b, c):
            client.infer(CACHED, [infer_input(x)])
        got = grpc_counts(client, CACHED)
        assert (got.hits, got.misses, got.execution_count) == (2, 4, 4)
        scraped = scrape(srv.metrics_url)
        assert metric(scraped, "dlserve_cache_entries") == 2
        assert metric(scraped, "dlserve_cache_bytes") == 2 * one
        assert metric(scraped, "dlserve_cache_evictions_total") == 2
        client.infer(CACHED, [infer_input(a)])  # a was evicted: a miss
        assert grpc_counts(client, CACHED).misses == 5
        client.close()


def test_a_model_asking_for_the_cache_on_a_server_without_one_serves_and_says_so(
    tmp_path: Path,
) -> None:
    with InProcessServer(build_repo(tmp_path)) as srv:
        client = grpcclient.InferenceServerClient(srv.url)
        x = batch(seed=6)
        for _ in range(2):
            client.infer(CACHED, [infer_input(x)])
        got = grpc_counts(client, CACHED)
        assert got == CacheCounts(hits=0, misses=0, success=2, inference_count=8,
                                  execution_count=2)  # fmt: skip
        line = f"model {CACHED}:1 asks for response_cache but the server has no cache"
        assert srv.log().count(line) == 1
        assert metric(scrape(srv.metrics_url), "dlserve_cache_entries") is None
        client.close()


@pytest.mark.parametrize("value", ["redis,host=cache", "local,size=1MB", "local"])
def test_a_cache_config_other_than_local_size_n_is_one_line_on_stderr(
    tmp_path: Path, value: str
) -> None:
    result = run_cli("serve", "--model-repository", str(build_repo(tmp_path)),
                     "--cache-config", value)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("dlserve serve: error: cache-config:"), line
    assert "expected local,size=N" in line and repr(value) in line, line


def test_perf_analyzer_reports_the_cache_hits_of_a_repeated_input(
    server: InProcessServer, client: grpcclient.InferenceServerClient
) -> None:
    binary, env = find_perf_analyzer()
    before = grpc_counts(client, CACHED)
    result = subprocess.run(
        [binary, "-m", CACHED, "-u", server.url, "-i", "grpc", "-b", "4", "--input-data", "zero",
         "--concurrency-range", "1", "--measurement-interval", "500",
         "--stability-percentage", "1000", "--max-trials", "3"],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    got = delta(grpc_counts(client, CACHED), before)
    # Every request carried the same zeros: one miss (if no earlier test sent
    # them), the rest hits, and perf_analyzer's server-side report shows them.
    assert got.misses <= 1 and got.hits > 0 and got.execution_count == got.misses, got
    reported = [int(n) for n in re.findall(r"Cache hit count: (\d+)", output)]
    assert reported and 0 < reported[-1] <= got.hits, output
