"""deploy/k8s: every kustomization renders (`kubectl kustomize`, offline), every
built-in object validates strictly against the Kubernetes OpenAPI schemas
(kubernetes-validate, two versions), the CRD objects against their field
subsets (crd_schemas.py), and the pieces agree with each other and with the
image: ports, probes, drain timing, labels, rules."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import crd_schemas, promql
from tests.deploy import dockerfiles as df
from tests.deploy.k8s import K8S_VERSIONS, arg
from tests.support import require_binary

K8S = promql.REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {
    "base": K8S / "base",
    "gpu": K8S / "overlays" / "gpu",
    "hpa-inflight": K8S / "overlays" / "hpa-inflight",
}
#: The server's drain after SIGTERM: `--exit-timeout-secs`, default 30.
SERVER_DRAIN_SECONDS = 30
KINDS = [
    "Deployment",
    "Service",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ServiceMonitor",
    "PrometheusRule",
]


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_binary("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(path) for name, path in KUSTOMIZATIONS.items()}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_every_object(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    assert sorted(d["kind"] for d in rendered[name]) == sorted(KINDS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_builtin_objects_validate_strictly(
    rendered: dict[str, list[dict[str, Any]]], name: str, version: str
) -> None:
    for doc in rendered[name]:
        if doc["kind"] in crd_schemas.BY_KIND:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Control: the check above fails on an unknown field."""
    deployment = copy.deepcopy(one(rendered["base"], "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_custom_resources_match_their_crd_fields(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    for doc in rendered[name]:
        if doc["kind"] in crd_schemas.BY_KIND:
            jsonschema.validate(doc, crd_schemas.BY_KIND[doc["kind"]])


def test_crd_schema_catches_a_misspelt_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    monitor = copy.deepcopy(one(rendered["base"], "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, crd_schemas.SERVICE_MONITOR)


def test_prometheusrule_is_the_rule_files(rendered: dict[str, list[dict[str, Any]]]) -> None:
    groups = [g for f in promql.rule_files() for g in yaml.safe_load(f.read_text())["groups"]]
    rule = one(rendered["base"], "PrometheusRule")
    by_name = lambda gs: {g["name"]: g for g in gs}  # noqa: E731
    assert by_name(rule["spec"]["groups"]) == by_name(groups)


def test_termination_grace_covers_prestop_and_drain(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for name, docs in rendered.items():
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        pre_stop = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= int(pre_stop[1]) + SERVER_DRAIN_SECONDS + 5, name


#: Probe -> the KServe V2 health endpoint it asks on the REST port.
PROBE_PATHS = {
    "startupProbe": "/v2/health/ready",
    "readinessProbe": "/v2/health/ready",  # 503 once the drain starts
    "livenessProbe": "/v2/health/live",  # 200 while draining: no restart mid-drain
}


def test_probes_use_rest_health_on_the_http_port(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        c = container(docs)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}, name
        assert int(arg(c["args"], "--http-port")) == ports["http"]
        assert int(arg(c["args"], "--grpc-port")) == ports["grpc"]
        assert int(arg(c["args"], "--metrics-port")) == ports["metrics"]
        for probe, path in PROBE_PATHS.items():
            # One handler only (an overlay patch must not add a second one).
            assert {k for k in c[probe] if k in ("httpGet", "grpc", "tcpSocket", "exec")} == {
                "httpGet"
            }, (name, probe)
            assert c[probe]["httpGet"] == {"path": path, "port": "http"}, (name, probe)


def test_container_matches_the_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """args follow the image's ENTRYPOINT (`dlserve`), the pod runs as the image's user."""
    for name, dockerfile, tag in (
        ("base", df.DOCKER_DIR / "Dockerfile", "cpu"),
        ("gpu", df.DOCKER_DIR / "Dockerfile.cuda", "cuda"),
    ):
        runtime = df.stage(df.parse(dockerfile), "runtime")
        entrypoint = runtime.last("ENTRYPOINT")
        cmd = runtime.last("CMD")
        assert entrypoint is not None and cmd is not None
        assert df.exec_form(entrypoint.value) == ["dlserve"]
        c = container(rendered[name])
        assert c["image"] == f"dlserve:{tag}"
        assert (
            c["args"][:5] == df.exec_form(cmd.value)[:5]
        )  # serve --model-repository /models --host 0.0.0.0
        user = runtime.last("USER")
        assert user is not None
        pod = one(rendered[name], "Deployment")["spec"]["template"]["spec"]
        uid, gid = map(int, user.value.split(":"))
        assert (
            pod["securityContext"]["runAsUser"] == uid
            and pod["securityContext"]["runAsGroup"] == gid
        )
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_services_select_the_pods_and_monitor_scrapes_once(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["base"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service, headless = one(docs, "Service", "dlserve"), one(docs, "Service", "dlserve-headless")
    for svc in (service, headless):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert headless["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in headless["spec"]["ports"]] == ["grpc"]
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8000, "http"),
        "grpc": (8001, "grpc"),
        "metrics": (8002, "metrics"),
    }
    monitor = one(docs, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    # The endpoint port name exists on the main Service only, so each pod is
    # scraped once even though the headless Service carries the same labels.
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    # Job label = Service name = the job the alert rules select.
    assert service["metadata"]["name"] == promql.SCRAPE_JOB


def test_hpa_and_pdb_fit_the_deployment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    deployment = one(docs, "Deployment")
    hpa, pdb = one(docs, "HorizontalPodAutoscaler"), one(docs, "PodDisruptionBudget")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (
        2
        <= hpa["spec"]["minReplicas"]
        <= deployment["spec"]["replicas"]
        <= hpa["spec"]["maxReplicas"]
    )
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_gpu_overlay_requests_a_gpu_and_the_cuda_image(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    c = container(rendered["gpu"])
    assert c["image"] == "dlserve:cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert arg(c["args"], "--device") == "cuda"
    pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    # Everything else is the base's.
    assert "--device" not in container(rendered["base"])["args"]
    assert "nvidia.com/gpu" not in str(rendered["base"])


def test_inflight_hpa_uses_the_adapter_metric(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = one(rendered["hpa-inflight"], "HorizontalPodAutoscaler")
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(by_type) == {"Resource", "Pods"}
    metric = by_type["Pods"]["pods"]["metric"]["name"]
    assert metric == "dlserve_inflight_requests"
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["seriesQuery"].startswith(metric + "{")
    assert rule["name"]["as"] == metric
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
