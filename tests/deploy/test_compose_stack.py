"""The compose stack brought up for real: podman-compose runs
deploy/compose.podman.yaml (dlserve and a Prometheus
built here from Debian's prometheus package on the same base image; Grafana's
image cannot be built here, so it stays lint-only). Prometheus must scrape
dlserve through the compose network by its service name (`dlserve:8002`, as
deploy/prometheus/prometheus.yml says) and evaluate the recording rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import podman as pm
from tests.deploy.promql import REPO
from tests.support import free_port, require_binary

pytestmark = pytest.mark.timeout(900)

DEPLOY = REPO / "deploy"
PROMETHEUS_IMAGE = "localhost/dlserve-prometheus:test"


def _compose_exe() -> list[str]:
    exe = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    return [exe]


def _query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


RECORD = "model:dlserve_requests:rate5m"


def _recording_rules() -> set[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus/rules/dlserve-recording.yml").read_text())
    return {r["record"] for g in groups["groups"] for r in g["rules"]}


def _predict(port: int, n: int) -> None:
    """n requests to mlp-circle over REST (plain JSON, as curl would send)."""
    body = json.dumps(
        {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.2]}]}
    ).encode()
    url = f"http://127.0.0.1:{port}/v2/models/mlp-circle/infer"
    for _ in range(n):
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    image = pm.ensure_image()
    backend = pm.podman("info", "--format", "{{.Host.NetworkBackend}}").stdout.strip()
    if backend == "cni":  # service names resolve only through the dnsname plugin
        require_binary("dnsname", "/usr/lib/cni/dnsname")
    pm.podman(
        "build", "--format", "docker", "--network", "host", *pm.ULIMITS,
        "--build-arg", f"BASE_IMAGE={pm.ensure_base()}",
        "-f", str(DEPLOY / "prometheus/Dockerfile"), "-t", PROMETHEUS_IMAGE,
        str(DEPLOY / "prometheus"),
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("compose")
    ports = {
        "DLSERVE_HTTP_PORT": free_port(), "DLSERVE_GRPC_PORT": free_port(),
        "DLSERVE_METRICS_PORT": free_port(), "PROMETHEUS_PORT": free_port(),
    }  # fmt: skip
    env = {
        **pm.low_ulimits_conf(folder, runtime="runc"),
        **{k: str(v) for k, v in ports.items()},
        "DLSERVE_IMAGE": image, "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
    }  # fmt: skip
    project = f"dlserve-test-{ports['PROMETHEUS_PORT']}"
    compose = [
        *_compose_exe(), "-p", project,
        "-f", str(DEPLOY / "compose.podman.yaml"),
    ]  # fmt: skip

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose, *args], capture_output=True, text=True, timeout=150,
            env={**os.environ, **env}, cwd=REPO,
        )  # fmt: skip

    up = run("up", "-d")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield ports
    finally:
        logs = run("logs")
        print(logs.stdout[-2000:], logs.stderr[-2000:])
        run("down", "-v", "-t", "10")


def test_prometheus_scrapes_dlserve_over_the_compose_network_and_records(
    stack: dict[str, int],
) -> None:
    port = stack["PROMETHEUS_PORT"]
    assert RECORD in _recording_rules()
    deadline = time.monotonic() + 240  # scrape and rule intervals are 15 s
    up: list[dict[str, Any]] = []
    ready: list[dict[str, Any]] = []
    recorded: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            # Traffic between scrapes: a rate needs two samples that differ.
            _predict(stack["DLSERVE_HTTP_PORT"], 5)
            up = _query(port, 'up{job="dlserve"}')
            ready = _query(port, "dlserve_model_ready")
            recorded = _query(port, f'{RECORD}{{model="mlp-circle"}}')
        except OSError:  # still starting
            time.sleep(1)
            continue
        if up and up[0]["value"][1] == "1" and ready and recorded:
            if float(recorded[0]["value"][1]) > 0:
                break
        time.sleep(1)
    # The target is the service name on the compose network, not a host port.
    assert up and up[0]["metric"]["instance"] == "dlserve:8002", up
    assert up[0]["value"][1] == "1", up
    models = {r["metric"]["model"] for r in ready if r["value"][1] == "1"}
    assert {"mlp-circle", "digits-cnn"} <= models, ready
    assert recorded and float(recorded[0]["value"][1]) > 0, (
        f"recording rule {RECORD} never saw the requests: {recorded}"
    )
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/api/v1/rules?type=record", timeout=5
    ) as answer:
        rules = json.loads(answer.read())["data"]["groups"]
    health = {r["name"]: r["health"] for g in rules for r in g["rules"]}
    assert health and set(health.values()) == {"ok"}, health
