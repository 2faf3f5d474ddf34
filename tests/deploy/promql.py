"""Every PromQL expression that deploy/ ships, in a form that can be evaluated.

Three sources, one function each, and `all_exprs()` for the lot:

- `dashboard_exprs()`: every `targets[].expr` of deploy/grafana/dashboards/*.json.
  The only Grafana variable in them is `$model`, substituted by its "All"
  value `.*` (or what you pass). No `$__rate_interval`/`$__interval`: panels
  use fixed `[1m]` windows.
- `recording_rule_exprs()`: every `expr` of a `record:` rule in
  deploy/prometheus/rules/*.yml. Each reads raw dlserve metric families only
  (no recorded series), so it evaluates without the rules being loaded.
- `alert_rule_exprs()`: every `alert:` rule's *signal*, i.e. its `expr` with
  the trailing `<comparison> <threshold>` cut off (`split_alert()`). The full
  alert expression is empty on a healthy server by design; the signal is not.
  The signal of DlserveTargetDown is `up{job="dlserve"}`: scrape dlserve under
  the job name `dlserve` (as `prometheus_config()` does).

On a Prometheus that scrapes a loaded dlserve with traffic, each expression
returns a non-empty vector (NaN samples count: histogram_quantile over a
window without requests gives NaN, not nothing).

`prometheus_config(targets)` gives deploy/prometheus/prometheus.yml with the
targets, intervals and absolute rule-file paths replaced, for tests that run
a real Prometheus.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO / "deploy" / "grafana" / "dashboards"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"

#: The "All" value of the dashboards' `$model` variable.
MODEL_ALL = ".*"
#: Job name the alert rules (and the ServiceMonitor's Service) use.
SCRAPE_JOB = "dlserve"

_ALERT_TAIL = re.compile(
    r"^(?P<signal>.*?)\s*\n\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$",
    re.DOTALL,
)


@dataclass(frozen=True)
class Expr:
    """One evaluable expression and where it comes from."""

    source: str  # "dashboard" | "recording" | "alert"
    name: str  # "<dashboard>/<panel title>/<refId>" | record name | alert name
    expr: str


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels, including the ones nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))
    return out


def dashboard_exprs(model: str = MODEL_ALL) -> list[Expr]:
    exprs = []
    for path in dashboard_files():
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                expr = target["expr"].replace("${model}", model).replace("$model", model)
                name = f"{path.stem}/{panel['title']}/{target['refId']}"
                exprs.append(Expr("dashboard", name, expr))
    return exprs


def _rules() -> list[dict[str, Any]]:
    rules = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def recording_rule_exprs() -> list[Expr]:
    return [
        Expr("recording", rule["record"], rule["expr"].strip())
        for rule in _rules()
        if "record" in rule
    ]


def split_alert(expr: str) -> tuple[str, str, float]:
    """`<signal>\\n<op> <threshold>` -> (signal, op, threshold); ValueError otherwise."""
    match = _ALERT_TAIL.match(expr.strip())
    if not match:
        raise ValueError(
            "alert expr must end with a line '<comparison> <number>' "
            f"(see deploy/prometheus/rules/dlserve-alerts.yml): {expr!r}"
        )
    return match["signal"].strip(), match["op"], float(match["threshold"])


def alert_rule_exprs() -> list[Expr]:
    return [
        Expr("alert", rule["alert"], split_alert(rule["expr"])[0])
        for rule in _rules()
        if "alert" in rule
    ]


def all_exprs(model: str = MODEL_ALL) -> list[Expr]:
    return dashboard_exprs(model) + recording_rule_exprs() + alert_rule_exprs()


def prometheus_config(
    targets: list[str], scrape_interval: str = "1s", evaluation_interval: str = "1s"
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml aimed at `targets` (e.g. ["127.0.0.1:8002"])."""
    config = copy.deepcopy(yaml.safe_load(PROMETHEUS_CONFIG.read_text()))
    config["global"]["scrape_interval"] = scrape_interval
    config["global"]["scrape_timeout"] = scrape_interval
    config["global"]["evaluation_interval"] = evaluation_interval
    config["rule_files"] = [str(path) for path in rule_files()]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == SCRAPE_JOB]
    job["static_configs"] = [{"targets": list(targets)}]
    return config


#: The metric families of shared/CONTRACT.md (histograms expose _bucket/_sum/_count).
CONTRACT_FAMILIES = {
    "dlserve_request_duration_seconds",
    "dlserve_queue_duration_seconds",
    "dlserve_compute_duration_seconds",
    "dlserve_batch_size",
    "dlserve_requests_total",
    "dlserve_inflight_requests",
    "dlserve_model_ready",
}
METRIC_NAME = re.compile(r"\b(dlserve_[a-z_]+?)(?:_bucket|_sum|_count)?\b")
