"""Podman helpers for tests/deploy/test_container.py: bootstrap a Debian base
image (cached by its inputs), build deploy/docker/Dockerfile on it, run it.

This machine has no Docker engine and no registry: the base image comes from
Debian's packages (mmdebstrap), runc replaces crun (which refuses the hybrid
cgroup layout), the ulimits are lowered to what the sandbox may set, and pip
inside the build sees the host's pip configuration and CA bundle, mounted
read-only at the same paths (no host is named anywhere). Users with Docker or
podman and a registry build the same Dockerfile unchanged.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import tempfile
from pathlib import Path

from tests.deploy.promql import REPO
from tests.support import require_binary

#: The mmdebstrap command line; the base image's tag is a hash of it.
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
BASE_ARGS = ("--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000")
IMAGE = "localhost/dlserve:cpu-test"


def podman(
    *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "--runtime", "runc", *args],
        check=check, capture_output=True, text=True, timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip


def low_ulimits_conf(folder: Path, runtime: str | None = None) -> dict[str, str]:
    """The environment for podman commands that take no --ulimit (``play
    kube``, podman-compose): a containers.conf whose default ulimits the
    sandbox may set, and the OCI runtime when the caller cannot pass one."""
    conf = folder / "containers.conf"
    limits = ", ".join(f'"{v}"' for k, v in zip(ULIMITS[::2], ULIMITS[1::2], strict=True))
    text = f"[containers]\ndefault_ulimits = [{limits}]\n"
    if runtime is not None:
        text += f'[engine]\nruntime = "{runtime}"\n'
    conf.write_text(text)
    return {"CONTAINERS_CONF": str(conf)}


def base_tag() -> str:
    digest = hashlib.sha256(" ".join(BASE_ARGS).encode()).hexdigest()[:12]
    return f"localhost/dlserve-base:bookworm-{digest}"


def ensure_base() -> str:
    """The bootstrapped base image, built once per distinct mmdebstrap line."""
    tag = base_tag()
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "base.tar"
        subprocess.run(
            ["mmdebstrap", *BASE_ARGS, str(tar)], check=True, capture_output=True, timeout=600
        )
        podman("import", str(tar), tag)
    return tag


def build_mounts() -> list[str]:
    """-v options: the host's pip configuration and CA bundle, read-only."""
    paths: set[str] = set()
    out = subprocess.run(
        ["python3", "-m", "pip", "config", "debug"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.endswith("exists: True"):
            conf = Path(line.split(",")[0])
            # A config in its own pip/ folder may name files beside it.
            paths.add(str(conf.parent if conf.parent.name == "pip" else conf))
    for env in ("PIP_CONFIG_FILE",):
        if os.environ.get(env) and Path(os.environ[env]).exists():
            paths.add(os.environ[env])
    cafile = ssl.get_default_verify_paths().cafile
    if cafile and Path(cafile).exists():
        paths.add(cafile)
    return [arg for p in sorted(paths) for arg in ("-v", f"{p}:{p}:ro")]


def build_image(base: str, tag: str = IMAGE) -> None:
    podman(
        "build", "--format", "docker", "--network", "host", *ULIMITS, *build_mounts(),
        "--build-arg", f"PYTHON_IMAGE={base}", "-f", "deploy/docker/Dockerfile", "-t", tag,
        str(REPO),
    )  # fmt: skip


def run_detached(image: str, *args: str, env: dict[str, str], volumes: tuple[str, ...] = ()) -> str:
    envs = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    vols = [a for v in volumes for a in ("-v", v)]
    proc = podman("run", "-d", "--network", "host", *ULIMITS, *envs, *vols, image, *args)
    return proc.stdout.strip()


def ensure_image() -> str:
    """The CPU image, built (podman's layer cache makes a rebuild quick);
    skips, or fails under DLSERVE_REQUIRE_SYSTEM_TOOLS=1, without the tools."""
    for tool in ("podman", "runc", "mmdebstrap"):
        require_binary(tool)
    build_image(ensure_base())
    return IMAGE
