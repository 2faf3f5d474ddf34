"""deploy/kserve: the ServingRuntime and InferenceService match the KServe CRD
fields they use (crd_schemas.py), their embedded core types validate strictly
as Kubernetes objects, and the two agree with each other and the image."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import crd_schemas, promql
from tests.deploy.k8s import K8S_VERSIONS, arg

KSERVE = promql.REPO / "deploy" / "kserve"


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((KSERVE / name).read_text()) if d]
    return doc


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return load("servingruntime.yaml")


@pytest.fixture(scope="module")
def isvc() -> dict[str, Any]:
    return load("inferenceservice.yaml")


def as_pod(containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": containers},
    }


def test_every_manifest_is_checked() -> None:
    kinds = sorted(load(p.name)["kind"] for p in KSERVE.glob("*.yaml"))
    assert kinds == ["InferenceService", "ServingRuntime"]


def test_manifests_match_their_crd_fields(runtime: dict[str, Any], isvc: dict[str, Any]) -> None:
    jsonschema.validate(runtime, crd_schemas.SERVING_RUNTIME)
    jsonschema.validate(isvc, crd_schemas.INFERENCE_SERVICE)


def test_crd_schema_catches_a_wrong_protocol(isvc: dict[str, Any]) -> None:
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["protocolVersion"] = "grpc-v3"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schemas.INFERENCE_SERVICE)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_embedded_core_types_validate(
    runtime: dict[str, Any], isvc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(as_pod(runtime["spec"]["containers"]), version, strict=True)
    model = isvc["spec"]["predictor"]["model"]
    model_container = {
        "name": "kserve-container",
        "image": "dlserve:cpu",
        "resources": model["resources"],
    }
    kubernetes_validate.validate(as_pod([model_container]), version, strict=True)


def test_inference_service_uses_the_runtime(runtime: dict[str, Any], isvc: dict[str, Any]) -> None:
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["protocolVersion"] == "v2"  # REST, served on the first port
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


#: KServe's default container port for REST (constants.InferenceServiceDefaultHttpPort).
KSERVE_HTTP_PORT = 8080


def test_runtime_container_serves_the_storage_mount_on_kserves_ports(
    runtime: dict[str, Any],
) -> None:
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == "kserve-container"
    assert c["args"][0] == "serve"  # the image's ENTRYPOINT is `dlserve`
    assert arg(c["args"], "--model-repository") == "/mnt/models"  # KServe's storage mount
    # REST first: KServe's predictor Service maps port 80 to the first port.
    rest, grpc = c["ports"]
    assert rest == {"name": "http", "containerPort": KSERVE_HTTP_PORT, "protocol": "TCP"}
    assert int(arg(c["args"], "--http-port")) == KSERVE_HTTP_PORT
    assert grpc["name"] == "h2c" and grpc["containerPort"] == int(arg(c["args"], "--grpc-port"))
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": KSERVE_HTTP_PORT}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": KSERVE_HTTP_PORT}
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == arg(c["args"], "--metrics-port")
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
