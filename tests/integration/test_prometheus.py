"""A real Prometheus (Debian's `prometheus`) scrapes a real dlserve under load,
with deploy/prometheus' config and rule files; every PromQL expression the
deploy/ directory ships -- dashboard panels, recording rules, alert signals
(tests/deploy/promql.py) -- returns a non-empty result through the HTTP API,
and Prometheus itself evaluates every rule without error."""

from __future__ import annotations

import math
from typing import Any, Iterator

import pytest

from devtools.inprocess import InProcessServer
from devtools.onnx_models import mlp, write_model
from tests.deploy import promql
from tests.integration.loadgen import Load
from tests.integration.prometheus_proc import SETTLE_TIMEOUT, Prometheus, wait_until
from tests.support import require_binary


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp-circle", model=mlp(features=2, hidden=(8,) * 6, classes=2))
    write_model(repo, "digits", model=mlp(features=64, hidden=(32,), classes=10, seed=1))
    with InProcessServer(repo) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(
    server: InProcessServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    target = f"127.0.0.1:{server.metrics_port}"
    prom = Prometheus(binary, tmp_path_factory.mktemp("prometheus"), [target])
    try:
        prom.wait_ready()
        with Load(server.url, {"mlp-circle": 2, "digits": 64}, threads=1, bad_every=8):
            # Series and rules need a few scrapes under load before rate()
            # has two samples in every window.
            missing = wait_until(
                lambda: [e.name for e in promql.all_exprs() if not prom.query(e.expr)]
            )
            assert not missing, f"still empty after {SETTLE_TIMEOUT:.0f}s: {missing}"
            yield prom
    finally:
        prom.stop()


def test_the_deploy_directory_ships_expressions() -> None:
    sources = [e.source for e in promql.all_exprs()]
    counts = {s: sources.count(s) for s in ("dashboard", "recording", "alert")}
    assert all(counts.values()), counts


def test_scrape_target_is_up(prometheus: Prometheus, server: InProcessServer) -> None:
    (target,) = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
    assert target["health"] == "up", target
    assert target["labels"]["job"] == promql.SCRAPE_JOB
    assert target["scrapeUrl"] == f"{server.metrics_url}/metrics"


@pytest.mark.parametrize("expr", promql.all_exprs(), ids=lambda e: f"{e.source}:{e.name}")
def test_expression_returns_data(prometheus: Prometheus, expr: promql.Expr) -> None:
    result = prometheus.query(expr.expr)
    assert result, f"{expr.source} {expr.name}: empty result for {expr.expr}"
    for series in result:
        float(series["value"][1])  # a number (NaN allowed: a quiet window)


def test_traffic_figures_are_real_numbers(prometheus: Prometheus) -> None:
    """Beyond non-empty: the load shows as throughput, latency and errors."""
    throughput = {s["metric"]["model"]: float(s["value"][1]) for s in prometheus.query(
        'sum by (model) (rate(dlserve_requests_total{code="OK"}[1m]))')}  # fmt: skip
    assert throughput.keys() == {"mlp-circle", "digits"} and min(throughput.values()) > 0
    p99 = prometheus.query(
        "histogram_quantile(0.99, sum by (le, model) (rate(dlserve_request_duration_seconds_bucket[1m])))"  # noqa: E501
    )
    assert {s["metric"]["model"] for s in p99} == {"mlp-circle", "digits"}
    assert all(0 < float(s["value"][1]) < 10 and math.isfinite(float(s["value"][1])) for s in p99)
    by_code = prometheus.query("sum by (code) (dlserve_requests_total)")
    codes = {s["metric"]["code"] for s in by_code}
    assert codes == {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
    ready = prometheus.query('dlserve_model_ready{provider="CPUExecutionProvider"} == 1')
    assert {s["metric"]["model"] for s in ready} == {"mlp-circle", "digits"}


def test_prometheus_evaluates_every_rule_file(prometheus: Prometheus) -> None:
    """The real rule files are loaded, every rule ran without error, and every
    recording rule produced its series."""

    def rules() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    expected = {e.name for e in promql.recording_rule_exprs() + promql.alert_rule_exprs()}
    assert {r["name"] for r in rules()} == expected
    not_ok = wait_until(
        lambda: [
            (r["name"], r["health"], r.get("lastError")) for r in rules() if r["health"] != "ok"
        ]
    )
    assert not not_ok, not_ok
    recorded = [e.name for e in promql.recording_rule_exprs()]
    empty = wait_until(lambda: [name for name in recorded if not prometheus.query(name)])
    assert not empty, f"recorded series missing: {empty}"
