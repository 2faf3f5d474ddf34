"""serving.metrics through a fresh registry, and the live page's figures
(serving.http_server.LiveStats) computed from it."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.http_server import Limits, MetricsHttpServer
from serving.live_stats import LIVE_WINDOW, LiveStats
from serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from serving.metrics_app import make_app

#: shared/CONTRACT.md, "Metrics": family -> (type, labels).
CONTRACT = {
    "dlserve_request_duration_seconds": ("histogram", {"model", "version"}),
    "dlserve_queue_duration_seconds": ("histogram", {"model", "version"}),
    "dlserve_compute_duration_seconds": ("histogram", {"model", "version"}),
    "dlserve_batch_size": ("histogram", {"model", "version"}),
    "dlserve_requests": ("counter", {"model", "version", "code"}),
    "dlserve_inflight_requests": ("gauge", {"model"}),
    "dlserve_model_ready": ("gauge", {"model", "version", "provider"}),
    # The project's own, beyond the contract's table (issue 13).
    "dlserve_queue_depth": ("gauge", {"model", "version", "priority"}),
    "dlserve_cache_hits": ("counter", {"model", "version"}),
    "dlserve_cache_misses": ("counter", {"model", "version"}),
}


def exposition(metrics: Metrics) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    text = generate_latest(metrics.registry).decode()
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(text)
    }


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture(params=[False, True], ids=["prometheus-histograms", "lockless-histograms"])
def metrics(request: pytest.FixtureRequest) -> Metrics:
    return Metrics(lockless=request.param)


def test_families_names_types_and_labels_are_the_contracts(metrics: Metrics) -> None:
    version = metrics.for_version("mlp", "1")
    version.request.observe(0.001)
    version.queue.observe(0.0001)
    version.compute.observe(0.0002)
    version.batch_size.observe(3)
    version.inflight.inc()
    version.ok.inc()
    metrics.count("mlp", "1", "INVALID_ARGUMENT")
    metrics.set_ready("mlp", "1", "CPUExecutionProvider", True)
    metrics.watch_queue("mlp", "1", lambda: [2, 0])
    hits, misses = metrics.for_cache("mlp", "1")
    hits.inc()
    misses.inc()

    families = exposition(metrics)
    # prometheus_client adds a `<family>_created` gauge (creation time) per
    # counter and histogram in the text format; the rest is exactly the contract.
    created = {f"{name}_created" for name, (kind, _) in CONTRACT.items() if kind != "gauge"}
    assert set(families) == set(CONTRACT) | created
    for name, (kind, labels) in CONTRACT.items():
        got_kind, samples = families[name]
        assert got_kind == kind, name
        assert samples, name
        for sample_name, sample_labels, _ in samples:
            if sample_name.endswith("_created"):
                continue
            assert set(sample_labels) - {"le"} == labels, (sample_name, sample_labels)
    # The counter is exposed under the contract's name.
    assert sample(metrics, "dlserve_requests_total", model="mlp", version="1", code="OK") == 1
    assert (
        sample(metrics, "dlserve_requests_total", model="mlp", version="1", code="INVALID_ARGUMENT")
        == 1
    )


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.for_version("m", "1").ok.inc()
    assert sample(a, "dlserve_requests_total", model="m", version="1", code="OK") == 1
    assert sample(b, "dlserve_requests_total", model="m", version="1", code="OK") is None
    assert not [f for f in REGISTRY.collect() if f.name.startswith("dlserve_")]


def test_latency_buckets_resolve_tens_of_microseconds_to_seconds(metrics: Metrics) -> None:
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    assert LATENCY_BUCKETS[0] <= 25e-6 and LATENCY_BUCKETS[-1] >= 5.0
    # No gap wider than 2.5x anywhere: a percentile is never off by more.
    assert max(b / a for a, b in zip(LATENCY_BUCKETS[:-1], LATENCY_BUCKETS[1:], strict=True)) <= 2.5
    # 50 us and 500 us land in different buckets (the contract's example).
    hist = metrics.for_version("m", "1").request
    hist.observe(50e-6)
    hist.observe(500e-6)

    def bucket(le: str) -> float | None:
        name = "dlserve_request_duration_seconds_bucket"
        return sample(metrics, name, model="m", version="1", le=le)

    assert bucket("5e-05") == 1 and bucket("0.0004") == 1 and bucket("0.0005") == 2
    assert list(BATCH_BUCKETS)[:4] == [1, 2, 4, 8] and BATCH_BUCKETS[-1] >= 1024


def test_for_version_binds_children_per_version_and_inflight_per_model(metrics: Metrics) -> None:
    v1, v2 = metrics.for_version("m", "1"), metrics.for_version("m", "2")
    v1.request.observe(0.002)
    v2.request.observe(0.003)
    v2.request.observe(0.004)
    v1.inflight.inc()
    v2.inflight.inc()
    count = "dlserve_request_duration_seconds_count"
    assert sample(metrics, count, model="m", version="1") == 1
    assert sample(metrics, count, model="m", version="2") == 2
    assert sample(metrics, "dlserve_inflight_requests", model="m") == 2
    # Binding again returns the same children: a reload does not reset counts.
    assert metrics.for_version("m", "1").request is v1.request


def test_disabled_metrics_count_nothing_but_readiness(metrics: Metrics) -> None:
    off = Metrics(enabled=False)
    off.count("m", "1", "NOT_FOUND")
    off.set_ready("m", "1", "CPUExecutionProvider", True)
    assert sample(off, "dlserve_requests_total", model="m", version="1", code="NOT_FOUND") is None
    provider = "CPUExecutionProvider"
    assert sample(off, "dlserve_model_ready", model="m", version="1", provider=provider) == 1


def test_readiness_flips_and_forget_drops_only_that_version(metrics: Metrics) -> None:
    metrics.set_ready("m", "1", "CPUExecutionProvider", True)
    metrics.set_ready("m", "2", "CPUExecutionProvider", True)
    metrics.set_ready("m", "2", "CPUExecutionProvider", False)

    def ready(version: str) -> float | None:
        provider = "CPUExecutionProvider"
        return sample(metrics, "dlserve_model_ready", model="m", version=version, provider=provider)

    assert ready("1") == 1 and ready("2") == 0
    for version in ("1", "2"):
        for counter in metrics.for_cache("m", version):
            counter.inc()
    metrics.forget_version("m", "2")
    assert ready("1") == 1 and ready("2") is None
    for name in ("dlserve_cache_hits_total", "dlserve_cache_misses_total"):
        assert sample(metrics, name, model="m", version="1") == 1
        assert sample(metrics, name, model="m", version="2") is None


# -- LiveStats -------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def by_model(stats: dict[str, object]) -> dict[str, dict[str, object]]:
    return {m["model"]: m for m in stats["models"]}  # type: ignore[attr-defined,index]


def test_live_stats_windowed_rates_percentiles_and_errors(metrics: Metrics) -> None:
    clock = Clock()
    live = LiveStats(metrics.registry, clock)
    v = metrics.for_version("mlp", "1")
    metrics.set_ready("mlp", "1", "CPUExecutionProvider", True)
    first = by_model(live.stats())["mlp"]
    assert first["throughput_rps"] == 0 and first["p50_ms"] is None

    for _ in range(90):
        v.request.observe(0.00009)  # bucket (75 us, 100 us]
    for _ in range(10):
        v.request.observe(0.009)  # bucket (7.5 ms, 10 ms]
    for _ in range(100):
        v.ok.inc()
    for _ in range(25):
        v.batch_size.observe(4)
    for _ in range(5):
        metrics.count("mlp", "1", "INVALID_ARGUMENT")
    for _ in range(3):
        metrics.count("", "", "NOT_FOUND")  # a model the server does not know
    clock.now += 10.0

    stats = live.stats()
    models = by_model(stats)
    assert list(models) == ["mlp", ""]  # the unknown model comes last
    m = models["mlp"]
    assert m["window_seconds"] == pytest.approx(10.0)
    assert m["throughput_rps"] == pytest.approx(10.0)
    assert m["errors_rps"] == pytest.approx(0.5)
    assert m["errors_by_code"] == {"INVALID_ARGUMENT": pytest.approx(0.5)}
    # Prometheus' histogram_quantile: linear inside the bucket.
    assert m["p50_ms"] == pytest.approx(0.075 + 0.025 * 50 / 90, abs=1e-4)
    assert m["p99_ms"] == pytest.approx(7.5 + 2.5 * 9 / 10, abs=1e-4)
    assert m["mean_batch"] == pytest.approx(4.0)
    batches = {b["le"]: b["per_second"] for b in m["batches"]}  # type: ignore[attr-defined]
    assert batches[4] == pytest.approx(2.5) and sum(batches.values()) == pytest.approx(2.5)
    assert m["versions"] == [{"version": "1", "provider": "CPUExecutionProvider", "ready": True}]
    assert m["requests_total"] == 105 and m["errors_total"] == 5
    # It appeared after the first read: averaged since its series was created.
    assert models[""]["errors_by_code"] == {"NOT_FOUND": pytest.approx(0.3, rel=0.01)}
    assert len(stats["history"]) == 2

    # A quiet window: nothing happened since the last read.
    clock.now += LIVE_WINDOW + 1
    quiet = by_model(live.stats())["mlp"]
    assert quiet["throughput_rps"] == 0 and quiet["p50_ms"] is None and quiet["errors_rps"] == 0
    assert quiet["requests_total"] == 105


def test_live_stats_reuses_a_read_taken_moments_ago(metrics: Metrics) -> None:
    clock = Clock()
    live = LiveStats(metrics.registry, clock)
    metrics.for_version("m", "1").ok.inc()
    assert len(live.stats()["history"]) == 1
    clock.now += 0.1
    assert len(live.stats()["history"]) == 1  # same read, no new point
    clock.now += 1.0
    assert len(live.stats()["history"]) == 2


def test_live_stats_before_a_second_read_average_since_the_series_appeared(
    metrics: Metrics,
) -> None:
    v = metrics.for_version("m", "1")
    for _ in range(40):
        v.ok.inc()
        v.request.observe(0.001)
    created = metrics.registry.get_sample_value(
        "dlserve_request_duration_seconds_created", {"model": "m", "version": "1"}
    )
    assert created is not None
    clock = Clock()
    clock.now = created + 20.0
    m = by_model(LiveStats(metrics.registry, clock).stats())["m"]
    assert m["throughput_rps"] == pytest.approx(2.0, rel=1e-3)
    assert 0.75 < m["p50_ms"] <= 1.0  # type: ignore[operator]


# -- the HTTP app ----------------------------------------------------------------------


@pytest.fixture
def http(metrics: Metrics) -> Iterator[str]:
    server = MetricsHttpServer(make_app(metrics.registry), "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.mark.parametrize("field", ["timeout", "max_threads", "max_pending"])
@pytest.mark.parametrize("value", [0, -1])
def test_http_limits_must_be_positive(field: str, value: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        Limits(**{field: value})
    assert getattr(Limits(**{field: 3}), field) == 3


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_http_serves_metrics_live_page_and_stats(metrics: Metrics, http: str) -> None:
    metrics.for_version("mlp", "1").ok.inc()
    metrics.set_ready("mlp", "1", "CPUExecutionProvider", True)

    status, ctype, body = get(http + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'dlserve_requests_total{code="OK",model="mlp",version="1"} 1.0' in body.decode()

    status, ctype, body = get(http + "/")
    assert status == 200 and ctype.startswith("text/html")
    page = body.decode()
    assert "/static/live.js" in page and "/static/live.css" in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    for name, kind in (("live.js", "javascript"), ("live.css", "text/css")):
        status, ctype, body = get(f"{http}/static/{name}")
        assert status == 200 and kind in ctype and body
        assert b"https://" not in body and b"http://" not in body

    status, ctype, body = get(http + "/api/stats")
    assert status == 200 and ctype == "application/json"
    stats = json.loads(body)
    assert stats["models"][0]["model"] == "mlp"
    assert math.isfinite(stats["time"]) and stats["window_seconds"] == LIVE_WINDOW


@pytest.mark.parametrize(
    "path", ["/nope", "/static/nope.js", "/static/../metrics.py", "/../http_server.py"]
)
def test_http_answers_404_outside_the_static_files(http: str, path: str) -> None:
    status, _, _ = get(http + path)
    assert status == 404


def test_queue_depth_is_read_per_priority_level_at_scrape_time_and_forgotten() -> None:
    metrics = Metrics()
    depths = [3, 0, 1]
    metrics.watch_queue("mlp", "2", lambda: list(depths))
    assert sample(metrics, "dlserve_queue_depth", model="mlp", version="2", priority="1") == 3
    depths[0] = 0
    assert sample(metrics, "dlserve_queue_depth", model="mlp", version="2", priority="1") == 0
    assert sample(metrics, "dlserve_queue_depth", model="mlp", version="2", priority="3") == 1
    metrics.forget_version("mlp", "2")
    assert sample(metrics, "dlserve_queue_depth", model="mlp", version="2", priority="3") is None


def test_the_live_page_shows_queue_depth_per_priority_level() -> None:
    metrics = Metrics()
    metrics.set_ready("mlp", "1", "CPUExecutionProvider", True)
    metrics.watch_queue("mlp", "1", lambda: [2, 0, 5])
    (row,) = LiveStats(metrics.registry).stats()["models"]
    assert row["model"] == "mlp"
    assert row["queued_by_priority"] == {"1": 2.0, "2": 0.0, "3": 5.0}
