"""deploy/grafana: the dashboard's queries parse, cover what the dashboard
promises, use only the `$model` variable, and match the provisioning files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import promql
from tests.support import require_binary

GRAFANA = promql.REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "dlserve.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dlserve.yml"
COMPOSE = promql.REPO / "deploy" / "compose.yaml"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return promql._panels(dashboard["panels"])


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    exprs = promql.dashboard_exprs()
    assert len(exprs) >= 15
    rules = [{"record": f"dashboard:expr_{i}:x", "expr": e.expr} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_only_the_model_variable_is_used(dashboard: dict[str, Any]) -> None:
    variables = dashboard["templating"]["list"]
    assert [v["name"] for v in variables] == ["model"]
    (model,) = variables
    assert model["includeAll"] and model["allValue"] == promql.MODEL_ALL
    raw = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for expr in raw:
        assert set(re.findall(r"\$\{?(\w+)", expr)) <= {"model"}, expr
    for e in promql.dashboard_exprs():
        assert "$" not in e.expr, e


def test_every_panel_queries_our_datasource(dashboard: dict[str, Any]) -> None:
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            assert target["expr"].strip()


def test_panel_layout_is_valid(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    """Latency percentiles per model, queue vs compute, throughput, errors by code,
    batch-size distribution, in-flight, readiness by execution provider."""
    by_title = {p["title"]: [t["expr"] for t in p["targets"]] for p in panels(dashboard)}

    def panel(fragment: str) -> list[str]:
        (title,) = [t for t in by_title if fragment in t]
        return by_title[title]

    latency = panel("Request latency per model")
    assert [e.split(",")[0] for e in latency] == [
        "histogram_quantile(0.5",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]
    assert all("by (le, model)" in e for e in latency)
    queue_compute = " ".join(panel("Queue vs compute"))
    assert "dlserve_queue_duration_seconds_bucket" in queue_compute
    assert "dlserve_compute_duration_seconds_bucket" in queue_compute
    assert "rate(dlserve_requests_total" in panel("Throughput per model")[0]
    assert "by (model, code)" in panel("by gRPC code")[0]
    assert "dlserve_batch_size_bucket" in panel("Batch size distribution")[0]
    assert "dlserve_inflight_requests" in panel("In-flight requests per model")[0]
    assert "provider" in panel("readiness by execution provider")[0]
    used = {m for exprs in by_title.values() for e in exprs for m in promql.METRIC_NAME.findall(e)}
    assert used == promql.CONTRACT_FAMILIES


def test_provisioning_matches_compose_mounts() -> None:
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./")
    )
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"


def test_latency_panel_shows_exemplars_that_open_the_trace(dashboard: dict[str, Any]) -> None:
    """The latency panel asks for exemplars (the trace ids dlserve attaches
    to request-duration buckets); the datasource turns the trace_id label
    into a link to the compose stack's Jaeger."""
    (latency,) = [p for p in panels(dashboard) if p["title"].startswith("Request latency")]
    assert latency["targets"] and all(t.get("exemplar") is True for t in latency["targets"])
    assert all("dlserve_request_duration_seconds_bucket" in t["expr"] for t in latency["targets"])
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (link,) = source["jsonData"]["exemplarTraceIdDestinations"]
    assert link["name"] == "trace_id"  # the exemplar label serving/recorder.py writes
    # $$ escapes Grafana's env interpolation in provisioning: a literal ${__value.raw}
    assert link["url"] == "http://localhost:16686/trace/$${__value.raw}"
    jaeger = yaml.safe_load(COMPOSE.read_text())["services"]["jaeger"]
    assert "127.0.0.1:16686:16686" in jaeger["ports"]
