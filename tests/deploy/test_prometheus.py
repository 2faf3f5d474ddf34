"""deploy/prometheus: promtool accepts the config and rules, the rules' unit
tests pass, and every expression is shaped so it can be evaluated alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import promql
from tests.support import require_binary

PROM_DIR = promql.REPO / "deploy" / "prometheus"
RULES_UNIT_TESTS = sorted((PROM_DIR / "tests").glob("*.test.yml"))


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_check_config() -> None:
    result = promtool("check", "config", PROM_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's rule_files glob must pick up our rule files, not nothing.
    assert f"SUCCESS: {len(promql.rule_files())} rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    files = promql.rule_files()
    assert {f.name for f in files} >= {"dlserve-recording.yml", "dlserve-alerts.yml"}
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """Control: the check above can fail (a PromQL syntax error is caught)."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "g", "rules": [{"record": "x:y:z", "expr": "sum by (model (x)"}]}]}
        )
    )
    assert promtool("check", "rules", bad).returncode != 0


@pytest.mark.parametrize("unit_test", RULES_UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(unit_test: Path) -> None:
    """Synthetic series drive the alerts: slow p99, error ratio, not-ready, target down."""
    result = promtool("test", "rules", unit_test)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_cover_every_alert() -> None:
    tested = set()
    for path in RULES_UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert tested == {e.name for e in promql.alert_rule_exprs()}


def test_required_recording_rules_exist() -> None:
    records = {e.name: e.expr for e in promql.recording_rule_exprs()}
    for q in ("p50", "p95", "p99"):
        expr = records[f"model:dlserve_request_duration_seconds:{q}_5m"]
        assert expr.startswith(f"histogram_quantile(0.{q[1:]}, ")
        assert "sum by (le, model) (rate(dlserve_request_duration_seconds_bucket[" in expr
    assert "model:dlserve_requests:rate5m" in records  # throughput
    assert "model:dlserve_request_errors:ratio_rate5m" in records


def test_alerts_cover_latency_slo_errors_and_readiness() -> None:
    signals = {e.name: e.expr for e in promql.alert_rule_exprs()}
    assert "dlserve_request_duration_seconds_bucket" in signals["DlserveP99LatencyHigh"]
    assert "histogram_quantile(0.99" in signals["DlserveP99LatencyHigh"]
    assert 'code!="OK"' in signals["DlserveErrorRatioHigh"]
    assert signals["DlserveModelNotReady"] == "dlserve_model_ready"


def test_every_alert_has_a_separable_threshold() -> None:
    rules = [
        r
        for f in promql.rule_files()
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    ]
    assert rules
    for rule in rules:
        signal, op, threshold = promql.split_alert(rule["expr"])
        assert signal and op in {">", "<", ">=", "<=", "==", "!="}
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_split_alert_rejects_inline_thresholds() -> None:
    with pytest.raises(ValueError):
        promql.split_alert("up == 0")
    assert promql.split_alert('up{job="dlserve"}\n== 0') == ('up{job="dlserve"}', "==", 0.0)


def test_every_extracted_expression_parses(tmp_path: Path) -> None:
    """Recording exprs and alert *signals* (and the dashboard's, in test_grafana) are
    valid PromQL on their own: promtool parses them as recording rules."""
    exprs = promql.recording_rule_exprs() + promql.alert_rule_exprs()
    rules = [{"record": f"check:expr_{i}:x", "expr": e.expr} for i, e in enumerate(exprs)]
    path = tmp_path / "extracted.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "extracted", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_rules_use_only_contract_metrics() -> None:
    for e in promql.recording_rule_exprs() + promql.alert_rule_exprs():
        names = set(promql.METRIC_NAME.findall(e.expr))
        assert names or e.expr == f'up{{job="{promql.SCRAPE_JOB}"}}', e
        assert names <= promql.CONTRACT_FAMILIES, (e.name, names - promql.CONTRACT_FAMILIES)


def test_prometheus_config_helper_points_at_targets() -> None:
    config = promql.prometheus_config(["127.0.0.1:9999"])
    (job,) = config["scrape_configs"]
    assert job["job_name"] == promql.SCRAPE_JOB
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9999"]}]
    assert all(Path(p).is_file() for p in config["rule_files"])
