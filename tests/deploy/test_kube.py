"""deploy/k8s/base's Deployment run for real with `podman play kube`.

The manifest is rendered with `kubectl kustomize` and run as written (its
security context: non-root uid 10001, read-only root filesystem, every
capability dropped; its emptyDir on /tmp), with three changes a cluster
would make for us: the image is the locally built one, the pod shares the
host's network on loopback, and the ports are free ones (the fixed
8000-8002 may be taken on a shared machine; on the host network
the containerPort mappings go). Then each of its probes
(startup, readiness, liveness) is performed as the kubelet would, against
the pod, and must pass; a prediction over gRPC equals onnxruntime; `podman
play kube --down` stops it. What cannot run here (HPA, Service load
balancing, KServe) stays schema-validated: deploy/README.md lists it.
"""

from __future__ import annotations

import http.client
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from tests.deploy import podman as pm
from tests.deploy.promql import REPO
from tests.integration.helpers import DEFAULT_MODELS, infer_input, reference, rows
from tests.support import free_port, require_binary

pytestmark = pytest.mark.timeout(900)

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _deployment() -> dict[str, Any]:
    kubectl = require_binary("kubectl")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPO / "deploy/k8s/base")],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    (doc,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    return dict(doc)


def _localise(doc: dict[str, Any], image: str) -> dict[str, int]:
    """The image built here, loopback, free ports; returns port name -> port."""
    doc["spec"]["replicas"] = 1
    pod = doc["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    (container,) = pod["containers"]
    container["image"] = image
    container["imagePullPolicy"] = "Never"
    ports = {p["name"]: free_port() for p in container["ports"]}
    flags = {"http": "--http-port", "grpc": "--grpc-port", "metrics": "--metrics-port"}
    args = container["args"]
    for name, flag in flags.items():
        args[args.index(flag) + 1] = str(ports[name])
    args[args.index("--host") + 1] = "127.0.0.1"
    # On the host's network there is nothing to map (podman refuses
    # containerPort mappings there); the probes still name ports by name.
    del container["ports"]
    return ports


def _probe(probe: dict[str, Any], ports: dict[str, int]) -> int:
    """One httpGet probe as the kubelet performs it: the status code."""
    get = probe["httpGet"]
    port = get["port"] if isinstance(get["port"], int) else ports[get["port"]]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=probe.get("timeoutSeconds", 1))
    try:
        conn.request("GET", get["path"])
        return conn.getresponse().status
    except OSError:
        return 0
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pod(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Any], dict[str, int]]]:
    require_binary("catatonit")  # podman builds the pod's pause image around it
    image = pm.ensure_image()
    doc = _deployment()
    ports = _localise(doc, image)
    folder = tmp_path_factory.mktemp("kube")
    manifest = folder / "deployment.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    env = pm.low_ulimits_conf(folder)
    played = pm.podman("play", "kube", "--network", "host", str(manifest), check=False, env=env)
    try:
        assert played.returncode == 0, played.stdout + played.stderr
        yield doc, ports
    finally:
        pm.podman("play", "kube", "--down", str(manifest), check=False, env=env)


def _logs() -> str:
    names = pm.podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
    ours = [n for n in names if n.startswith("dlserve-pod")]
    return "\n".join(pm.podman("logs", n, check=False).stderr[-3000:] for n in ours)


def test_deployment_probes_pass_and_it_serves(
    pod: tuple[dict[str, Any], dict[str, int]],
) -> None:
    doc, ports = pod
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    # The startup probe's budget, as the kubelet would allow it.
    startup = container["startupProbe"]
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    deadline = time.monotonic() + budget
    while _probe(startup, ports) != 200:
        assert time.monotonic() < deadline, f"startup probe never passed:\n{_logs()}"
        time.sleep(startup["periodSeconds"] / 4)
    for name in PROBES:
        assert _probe(container[name], ports) == 200, (name, _logs())
    client = triton.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
    x = rows(3)
    expected = reference(DEFAULT_MODELS / "mlp-circle" / "1" / "model.onnx", x)
    answer = client.infer("mlp-circle", [infer_input(x)])
    for output, want in expected.items():
        np.testing.assert_allclose(answer.as_numpy(output), want, rtol=1e-5, atol=1e-6)
    client.close()


def test_the_manifest_security_context_holds_in_the_pod(
    pod: tuple[dict[str, Any], dict[str, int]],
) -> None:
    """The pod runs as the manifest says: uid 10001, no capabilities, a
    read-only root filesystem (writing outside /tmp fails)."""
    names = pm.podman("ps", "--format", "{{.Names}}").stdout.split()
    (name,) = [n for n in names if n.startswith("dlserve-pod") and n.endswith("dlserve")]
    status = pm.podman("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == ["10001"] * 4, fields["Uid"]
    assert int(fields["CapEff"].strip(), 16) == 0, fields["CapEff"]
    write = pm.podman("exec", name, "python", "-c", "open('/app-probe', 'w')", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write.stderr
    tmp = pm.podman("exec", name, "python", "-c", "open('/tmp/probe', 'w').write('x')", check=False)
    assert tmp.returncode == 0, tmp.stderr
