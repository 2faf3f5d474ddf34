"""The CPU image's recipe, replayed without Docker, serves without torch.

No Docker engine runs here, so this test does what `docker build` +
`docker run` would do with deploy/docker/Dockerfile, on the host:

1. The build context goes through .dockerignore (the Docker SDK's matcher).
2. The `build` stage is replayed instruction by instruction -- the same ARG,
   ENV, WORKDIR, COPY and RUN, with the same requirement files and pip
   commands, run by /bin/sh -- in a fresh directory standing in for the
   container's filesystem: every absolute path of the Dockerfile (/opt/dlserve,
   /src, /models) is mapped under tmp_path. `python -m venv` uses the
   interpreter this test suite runs on (CPython 3.11, as the image's base).
3. The `runtime` stage's COPY and ENV are applied the same way (its RUN only
   creates the user, which needs root, and is skipped), then the image's
   ENTRYPOINT + CMD start the server on the baked default models, with the
   listen address narrowed from 0.0.0.0 to 127.0.0.1 and free ports appended.
4. The gRPC health service answers SERVING, the image's HEALTHCHECK command
   (GET /v2/health/ready on the REST port) passes, tritonclient sees the
   server and every model ready and gets probabilities back, the metrics
   port serves /metrics and the live page with its static files,
   `import torch` fails in that environment, and
   SIGTERM ends the server with exit code 0.

pip downloads from the package index (the Dockerfile passes --no-cache-dir),
so this test takes tens of seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import dockerfiles as df
from tests.deploy.promql import REPO
from tests.support import free_port

DOCKERFILE = df.DOCKER_DIR / "Dockerfile"
#: An absolute path in a Dockerfile value (not a URL, not a variable).
_ABS_PATH = re.compile(r"(?<![\w.$:/])/[\w./-]*")
#: Environment variables of the test run that would leak into "the container".
_LEAKY = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "CONDA_PREFIX")


class Replay:
    """A container filesystem rooted at `root`, built by replaying instructions."""

    def __init__(self, root: Path, context: set[str]) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        self.context = context
        self.log: list[str] = []
        self.start_stage()

    def start_stage(self) -> None:
        """FROM: a stage starts from the base image's working directory and
        environment (the files of earlier stages stay, as --from can copy them)."""
        self.workdir = "/"
        base_python = Path(sys.base_prefix) / "bin"
        self.env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
        self.env["PATH"] = f"{base_python}:/usr/local/bin:/usr/bin:/bin"

    def host(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def map_paths(self, text: str) -> str:
        return _ABS_PATH.sub(lambda m: str(self.host(m.group(0))), text)

    def container_abs(self, path: str) -> str:
        return path if path.startswith("/") else f"{self.workdir.rstrip('/')}/{path}"

    def copy_from_context(self, sources: list[str], dest: str) -> None:
        dest_is_dir = dest.endswith("/") or len(sources) > 1
        target = self.host(self.container_abs(dest))
        for source in sources:
            rel = source.rstrip("/")
            assert rel in self.context, f"COPY {source}: not in the build context (.dockerignore)"
            src = REPO / rel
            if src.is_dir():
                for path in sorted(self.context):
                    if path.startswith(rel + "/") and (REPO / path).is_file():
                        out = target / path[len(rel) + 1 :]
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(REPO / path, out)
                target.mkdir(parents=True, exist_ok=True)
            else:
                out = target / src.name if dest_is_dir else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)

    def apply(self, instruction: df.Instruction, *, stage: str) -> None:
        name, value = instruction.name, instruction.value
        if name == "ENV":
            for key, val in df.env_pairs(value).items():
                self.env[key] = re.sub(
                    r"\$\{?(\w+)\}?", lambda m: self.env.get(m.group(1), ""), self.map_paths(val)
                )
        elif name == "WORKDIR":
            self.workdir = self.container_abs(value)
            self.host(self.workdir).mkdir(parents=True, exist_ok=True)
        elif name == "COPY":
            flags, sources, dest = df.copy_args(value)
            if "from" in flags:
                # --from=build: the same filesystem here, so the path must not move.
                assert flags["from"] == "build" and sources == [dest], value
                assert self.host(dest).exists(), f"COPY {value}: missing in the build stage"
            else:
                self.copy_from_context(sources, dest)
        elif name == "RUN":
            if stage == "runtime":
                # Only user creation (needs root); test_docker checks it installs nothing.
                assert "pip" not in value, value
                return
            command = self.map_paths(value)
            started = time.monotonic()
            result = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=self.host(self.workdir),
                env=self.env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            self.log.append(f"RUN {value}  ({time.monotonic() - started:.1f} s)")
            assert result.returncode == 0, f"RUN {value}\n{result.stdout}\n{result.stderr}"
        elif name in {"ARG", "LABEL", "USER", "EXPOSE", "STOPSIGNAL"}:
            pass  # substituted by the parser / metadata without effect on the files
        elif name in {"HEALTHCHECK", "ENTRYPOINT", "CMD"}:
            pass  # read by the test after the replay
        else:
            raise AssertionError(f"{stage} stage: no replay for {name} {value!r}; extend this test")

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        exe = shutil.which(argv[0], path=self.env["PATH"])
        assert exe, f"{argv[0]} is not on the image's PATH"
        return subprocess.run(
            [exe, *argv[1:]],
            env=self.env,
            cwd=self.host(self.workdir),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return str(reply.read().decode())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"GET {url}: {exc.code} {exc.reason}") from exc


def wait_serving(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()}"
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"server not SERVING after {timeout} s:\n{log.read_text()}")


@pytest.fixture()
def server_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # only on failure: the test stops its server itself
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.timeout(900)
def test_cpu_image_recipe_serves_default_models_without_torch(
    tmp_path: Path, server_proc: list[subprocess.Popen[bytes]]
) -> None:
    stages = df.parse(DOCKERFILE)
    replay = Replay(tmp_path / "rootfs", df.build_context())

    # ---- docker build -----------------------------------------------------
    for instruction in df.stage(stages, "build").instructions:
        replay.apply(instruction, stage="build")
    runtime = df.stage(stages, "runtime")
    replay.start_stage()
    for instruction in runtime.instructions:
        replay.apply(instruction, stage="runtime")
    print("\n".join(replay.log))

    # What got installed: the serving install, the CPU ONNX Runtime, no torch.
    probe = replay.run(
        [
            "python",
            "-c",
            "import importlib.metadata as m, serving;"
            "print(serving.__file__);"
            "print(*sorted(d.metadata['Name'].lower() for d in m.distributions()))",
        ]
    )
    assert probe.returncode == 0, probe.stderr
    module_file, installed = probe.stdout.splitlines()
    assert module_file.startswith(str(replay.host("/opt/dlserve"))), module_file  # not the checkout
    installed_names = set(installed.split())
    assert {"dlserve", "onnxruntime", "grpcio-health-checking"} <= installed_names
    assert not {"torch", "onnxruntime-gpu"} & installed_names
    no_torch = replay.run(["python", "-c", "import torch"])
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr

    models = sorted(p.parent.name for p in replay.host("/models").glob("*/config.pbtxt"))
    assert models, "the image bakes no model: models/ holds no <name>/config.pbtxt"

    # ---- docker run ---------------------------------------------------------
    entrypoint, cmd = runtime.last("ENTRYPOINT"), runtime.last("CMD")
    assert entrypoint is not None and cmd is not None
    argv = df.exec_form(entrypoint.value) + df.exec_form(cmd.value)
    argv = [replay.map_paths(a) if a.startswith("/") else a for a in argv]
    argv = ["127.0.0.1" if a == "0.0.0.0" else a for a in argv]
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    argv += ["--http-port", str(http_port), "--grpc-port", str(grpc_port)]
    argv += ["--metrics-port", str(metrics_port)]
    exe = shutil.which(argv[0], path=replay.env["PATH"])
    assert exe and exe.startswith(str(replay.host("/opt/dlserve/bin"))), exe
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, *argv[1:]],
            env=replay.env,
            cwd=replay.host(replay.workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server_proc.append(proc)
    started = time.monotonic()
    wait_serving(grpc_port, proc, log, timeout=120)
    print(f"server SERVING {time.monotonic() - started:.1f} s after start")

    # The image's HEALTHCHECK command, as Docker would run it in the container.
    check = runtime.last("HEALTHCHECK")
    assert check is not None
    health_argv = [
        replay.map_paths(a) if a.startswith("/") else a for a in df.healthcheck_command(check)
    ]
    replay.env["SERVING_HTTP_PORT"] = str(http_port)
    health = replay.run(health_argv)
    assert health.returncode == 0 and health.stdout.strip() == "READY", (
        health.stdout + health.stderr
    )

    client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        for name in models:
            assert client.is_model_ready(name), name
            metadata = client.get_model_metadata(name, as_json=True)
            (spec,) = metadata["inputs"]
            shape = [1 if int(d) < 0 else int(d) for d in spec["shape"]]
            infer_input = triton.InferInput(spec["name"], shape, spec["datatype"])
            infer_input.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
            result = client.infer(
                name, [infer_input], outputs=[triton.InferRequestedOutput("probabilities")]
            )
            probabilities = result.as_numpy("probabilities")
            assert probabilities is not None and probabilities.shape[0] == 1, name
            assert np.isclose(probabilities.sum(), 1.0, atol=1e-4), (name, probabilities)
    finally:
        client.close()

    # The metrics port: Prometheus text with the requests just made, and the
    # live page with its own static files (package data of the installed wheel).
    base = f"http://127.0.0.1:{metrics_port}"
    ok = {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(http_get(f"{base}/metrics"))
        for sample in family.samples
        if sample.name == "dlserve_requests_total" and sample.labels.get("code") == "OK"
    }
    assert ok == {name: 1.0 for name in models}
    page = http_get(f"{base}/")
    assert "<html" in page.lower()
    for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', page):
        assert http_get(base + asset), asset

    # docker stop: SIGTERM, then the server drains and exits 0.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=45) == 0, log.read_text()
