"""The CPU image, built and run for real with podman (no Docker engine here).

Once per session: bootstrap a Debian bookworm base image with mmdebstrap
(cached by a hash of its command line), build deploy/docker/Dockerfile on it,
then check as a user would: ready over gRPC and REST, predictions equal to
onnxruntime, the image's HEALTHCHECK exits 0 inside the container, the server
runs as the non-root user, no torch in the image, the image size (printed),
a repository mounted read-only over /models is served, and `podman stop`
during 8 concurrent clients loses no accepted request and exits 0.
Skips when podman, runc or mmdebstrap is missing (fails under
DLSERVE_REQUIRE_SYSTEM_TOOLS=1).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from devtools.onnx_models import mlp, write_model
from tests.deploy import podman as pm
from tests.integration.helpers import DEFAULT_MODELS, DEFAULT_NAMES, infer_input, reference, rows
from tests.support import free_port

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def image() -> str:
    return pm.ensure_image()


def _ports() -> dict[str, str]:
    return {
        "SERVING_HTTP_PORT": str(free_port()),
        "SERVING_GRPC_PORT": str(free_port()),
        "SERVING_METRICS_PORT": str(free_port()),
        "SERVING_HOST": "127.0.0.1",
    }


_SERVE = ("serve", "--model-repository", "/models")


def _wait_ready(grpc_url: str, container: str) -> triton.InferenceServerClient:
    client = triton.InferenceServerClient(grpc_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready():
                return client
        except InferenceServerException:
            pass
        state = pm.podman("inspect", "-f", "{{.State.Running}}", container).stdout.strip()
        assert state == "true", pm.podman("logs", container, check=False).stderr[-3000:]
        time.sleep(0.5)
    raise AssertionError(pm.podman("logs", container, check=False).stderr[-3000:])


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[tuple[str, dict[str, str]]]:
    env = _ports()
    container = pm.run_detached(image, *_SERVE, env=env)
    try:
        _wait_ready(f"127.0.0.1:{env['SERVING_GRPC_PORT']}", container)
        yield container, env
    finally:
        pm.podman("rm", "-f", "-t", "5", container, check=False)


def test_ready_over_grpc_and_rest_and_predictions_equal_onnxruntime(
    served: tuple[str, dict[str, str]],
) -> None:
    _, env = served
    grpc_client = triton.InferenceServerClient(f"127.0.0.1:{env['SERVING_GRPC_PORT']}")
    http_client = triton_http.InferenceServerClient(f"127.0.0.1:{env['SERVING_HTTP_PORT']}")
    assert grpc_client.is_server_ready() and http_client.is_server_ready()
    for name in DEFAULT_NAMES:
        assert grpc_client.is_model_ready(name) and http_client.is_model_ready(name), name
    x = rows(4)
    expected = reference(DEFAULT_MODELS / "mlp-circle" / "1" / "model.onnx", x)
    answer = grpc_client.infer("mlp-circle", [infer_input(x)])
    for output, want in expected.items():
        np.testing.assert_allclose(answer.as_numpy(output), want, rtol=1e-5, atol=1e-6)


def test_healthcheck_user_no_torch_and_size(image: str, served: tuple[str, dict[str, str]]) -> None:
    container, _ = served
    health = pm.podman("healthcheck", "run", container, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    inspect = pm.podman("image", "inspect", "-f", "{{.Config.Healthcheck.Test}}", image).stdout
    assert "healthcheck.py" in inspect
    ids = pm.podman("exec", container, "cat", "/proc/1/status").stdout
    uid_line = next(line for line in ids.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == ["10001"] * 4, uid_line
    torch = pm.podman("exec", container, "python", "-c", "import torch", check=False)
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
    size = int(pm.podman("image", "inspect", "-f", "{{.Size}}", image).stdout)
    print(f"image {image}: {size / 1e6:.0f} MB")
    assert size > 0


def test_readonly_repository_and_stop_under_load(image: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "mounted", model=mlp(seed=7))
    for path in (repo, *repo.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = _ports()
    container = pm.run_detached(image, *_SERVE, env=env, volumes=(f"{repo}:/models:ro",))
    try:
        url = f"127.0.0.1:{env['SERVING_GRPC_PORT']}"
        client = _wait_ready(url, container)
        assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]] == [
            "mounted"
        ]
        x = rows(2)
        expected = reference(repo / "mounted" / "1" / "model.onnx", x)
        ok, wrong, errors = [0], [], []
        lock = threading.Lock()
        started = threading.Barrier(9)

        def load() -> None:
            c = triton.InferenceServerClient(url)
            started.wait()
            while True:
                try:
                    answer = c.infer("mounted", [infer_input(x)], client_timeout=30)
                except InferenceServerException as exc:
                    with lock:
                        errors.append(str(exc.status()))
                    return
                same = all(
                    np.allclose(answer.as_numpy(k), v, atol=1e-6) for k, v in expected.items()
                )
                with lock:
                    if same:
                        ok[0] += 1
                    else:
                        wrong.append(answer)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        started.wait()
        while ok[0] < 50:
            time.sleep(0.05)
        pm.podman("stop", "-t", "30", container)
        for t in threads:
            t.join(60)
        code = pm.podman("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
        assert code == "0", pm.podman("logs", container, check=False).stderr[-3000:]
        assert not wrong
        # After stop, each client ends on a refusal: UNAVAILABLE, or CANCELLED
        # for a call grpc's stop caught before any handler (as in
        # tests/integration/test_shutdown.py); never INTERNAL or a wrong answer.
        allowed = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
        assert len(errors) == 8 and set(errors) <= allowed, errors
        print(f"stop under load: {ok[0]} answered, clients ended on {sorted(errors)}")
        assert ok[0] >= 50
    finally:
        pm.podman("rm", "-f", "-t", "5", container, check=False)
