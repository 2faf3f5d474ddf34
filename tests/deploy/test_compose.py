"""deploy/compose*.yaml: valid against the Compose specification's JSON schema
(check-jsonschema's bundled copy, offline) and consistent with the files and
images it refers to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import dockerfiles as df
from tests.deploy import promql

DEPLOY = promql.REPO / "deploy"
COMPOSE_FILES = [
    DEPLOY / "compose.yaml",
    DEPLOY / "compose.gpu.yaml",
    DEPLOY / "compose.podman.yaml",
]


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert exe, "check-jsonschema is not installed in the test environment"
    return subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_compose_files_match_the_compose_spec() -> None:
    result = check_jsonschema(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_an_unknown_key(tmp_path: Path) -> None:
    """Control: a misspelt service key fails the same check."""
    data = load(COMPOSE_FILES[0])
    data["services"]["dlserve"]["stop_grace_perod"] = "40s"
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert check_jsonschema(bad).returncode != 0


def test_stack_has_dlserve_prometheus_and_grafana_on_localhost() -> None:
    services = load(DEPLOY / "compose.yaml")["services"]
    assert set(services) == {"dlserve", "prometheus", "grafana", "jaeger"}
    assert "127.0.0.1:3000:3000" in services["grafana"]["ports"]
    assert set(services["dlserve"]["ports"]) == {
        "127.0.0.1:8000:8000",  # REST
        "127.0.0.1:8001:8001",  # gRPC
        "127.0.0.1:8002:8002",  # metrics
    }
    # Images are pinned by version, never :latest.
    for name in ("prometheus", "grafana", "jaeger"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image


def test_dlserve_service_builds_the_cpu_image_and_drains() -> None:
    dlserve = load(DEPLOY / "compose.yaml")["services"]["dlserve"]
    context = (DEPLOY / dlserve["build"]["context"]).resolve()
    assert context == promql.REPO
    assert (context / dlserve["build"]["dockerfile"]).is_file()
    assert dlserve["command"][:3] == ["serve", "--model-repository", "/models"]
    (models,) = dlserve["volumes"]
    assert (DEPLOY / models["source"]).resolve() == promql.REPO / "models"
    assert models["target"] == "/models" and models["read_only"]
    assert dlserve["stop_signal"] == "SIGTERM"
    # The server drains within 30 s after SIGTERM.
    assert int(dlserve["stop_grace_period"].rstrip("s")) > 30


def test_dlserve_healthcheck_is_the_images_rest_check() -> None:
    """compose runs the image's own script (GET /v2/health/ready on the REST
    port, SERVING_HTTP_PORT unset: 8000), with the image's timing."""
    check = load(DEPLOY / "compose.yaml")["services"]["dlserve"]["healthcheck"]
    runtime = df.stage(df.parse(df.DOCKER_DIR / "Dockerfile"), "runtime")
    image_check = runtime.last("HEALTHCHECK")
    assert image_check is not None
    assert check["test"] == ["CMD", *df.healthcheck_command(image_check)]
    for option in ("interval", "timeout", "start_period", "retries"):
        assert f"--{option.replace('_', '-')}={check[option]}" in image_check.value, option
    assert "/v2/health/ready" in (df.DOCKER_DIR / "healthcheck.py").read_text()
    gpu = load(DEPLOY / "compose.gpu.yaml")["services"]["dlserve"]["healthcheck"]
    cuda_check = df.stage(df.parse(df.DOCKER_DIR / "Dockerfile.cuda"), "runtime").last(
        "HEALTHCHECK"
    )
    assert cuda_check is not None and f"--start-period={gpu['start_period']}" in cuda_check.value


def test_prometheus_service_mounts_our_config_and_rules() -> None:
    prometheus = load(DEPLOY / "compose.yaml")["services"]["prometheus"]
    mounts = dict(
        v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"] if v.startswith("./")
    )
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    for source in mounts:
        assert (DEPLOY / source).exists(), source
    # prometheus.yml scrapes the compose service by name on the metrics port.
    (job,) = load(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["dlserve:8002"]}]


def test_gpu_override_uses_the_cuda_image_and_reserves_gpus() -> None:
    dlserve = load(DEPLOY / "compose.gpu.yaml")["services"]["dlserve"]
    assert dlserve["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
    assert (promql.REPO / dlserve["build"]["dockerfile"]).is_file()
    assert dlserve["command"][-2:] == ["--device", "auto"]
    (device,) = dlserve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_tracing_profile_sends_dlserves_traces_to_the_collector() -> None:
    """The collector is optional (profile "tracing"); dlserve's --trace-config
    names it by service name on its OTLP/HTTP port, in entries the server
    accepts; Prometheus keeps exemplars."""
    from serving.trace_settings import parse

    services = load(DEPLOY / "compose.yaml")["services"]
    jaeger = services["jaeger"]
    assert jaeger["profiles"] == ["tracing"]
    assert "127.0.0.1:16686:16686" in jaeger["ports"]
    assert all("profiles" not in services[name] for name in ("dlserve", "prometheus", "grafana"))
    command = services["dlserve"]["command"]
    entries = [command[i + 1] for i, arg in enumerate(command) if arg == "--trace-config"]
    # compose's defaults for the ${VAR:-default} entries
    expanded = [e.replace("${DLSERVE_TRACE_LEVEL:-OFF}", "OFF")
                .replace("${DLSERVE_TRACE_RATE:-100}", "100") for e in entries]  # fmt: skip
    config = parse(expanded)
    assert config.export.url == "http://jaeger:4318/v1/traces"
    assert config.scope.rate == 100 and config.scope.level == "OFF"
    assert parse([e.replace("OFF", "TIMESTAMPS") for e in expanded]).scope.level == "TIMESTAMPS"
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
