"""requirements/serve-*.txt (what the images install) agree with pyproject.toml:
every base dependency pinned to a version its specifier allows, exactly one
ONNX Runtime per image, nothing from the train extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.promql import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REQ_DIR = REPO / "requirements"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
ORT = {"cpu": "onnxruntime", "gpu": "onnxruntime-gpu"}


def read_requirements(path: Path) -> list[Requirement]:
    """Requirement lines, following `-r other.txt` includes."""
    out: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += read_requirements(path.parent / line.split(maxsplit=1)[1])
            continue
        assert not line.startswith("-"), f"{path.name}: unexpected option {line!r}"
        out.append(Requirement(line))
    return out


def pins(path: Path) -> dict[str, str]:
    result: dict[str, str] = {}
    for req in read_requirements(path):
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {req} is not pinned with =="
        name = canonicalize_name(req.name)
        assert name not in result, f"{path.name}: {name} pinned twice"
        result[name] = spec.version
    return result


def by_name(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_every_base_dependency_is_pinned_within_its_range(extra: str) -> None:
    pinned = pins(REQ_DIR / f"serve-{extra}.txt")
    wanted = by_name(PYPROJECT["dependencies"]) | by_name(PYPROJECT["optional-dependencies"][extra])
    for name, req in wanted.items():
        assert name in pinned, f"serve-{extra}.txt lacks {req} (pyproject.toml)"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"serve-{extra}.txt pins {name}=={pinned[name]}, pyproject wants {req}"
        )


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_exactly_one_onnxruntime(extra: str) -> None:
    pinned = pins(REQ_DIR / f"serve-{extra}.txt")
    other = "gpu" if extra == "cpu" else "cpu"
    assert ORT[extra] in pinned and ORT[other] not in pinned
    assert not set(ORT.values()) & set(pins(REQ_DIR / "serve-base.txt"))


@pytest.mark.parametrize("path", sorted(REQ_DIR.glob("*.txt")), ids=lambda p: p.name)
def test_nothing_from_the_train_extra(path: Path) -> None:
    train = set(by_name(PYPROJECT["optional-dependencies"]["train"])) | {"torch"}
    assert not train & set(pins(path)), path.name


def test_cpu_and_gpu_share_the_same_base_pins() -> None:
    cpu, gpu = pins(REQ_DIR / "serve-cpu.txt"), pins(REQ_DIR / "serve-gpu.txt")
    common = set(cpu) & set(gpu)
    assert {n: cpu[n] for n in common} == {n: gpu[n] for n in common}
    assert set(cpu) - common == {"onnxruntime"} and set(gpu) - common == {"onnxruntime-gpu"}
