"""The install promises of the contract: serving never pulls in torch, and
onnxruntime / onnxruntime-gpu never end up side by side."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.runtime import both_onnxruntimes_installed

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_serving_install_has_neither_torch_nor_a_chosen_onnxruntime() -> None:
    base = names(PROJECT["dependencies"])
    assert "torch" not in base
    assert not {"onnxruntime", "onnxruntime-gpu"} & base


def test_each_onnxruntime_comes_from_its_own_extra_only() -> None:
    extras = {k: names(v) for k, v in PROJECT["optional-dependencies"].items()}
    assert extras["cpu"] & {"onnxruntime", "onnxruntime-gpu"} == {"onnxruntime"}
    assert extras["gpu"] & {"onnxruntime", "onnxruntime-gpu"} == {"onnxruntime-gpu"}
    for extra, deps in extras.items():
        if extra not in ("cpu", "gpu"):
            assert not {"onnxruntime", "onnxruntime-gpu"} & deps, extra
    assert "torch==2.13.0" in PROJECT["optional-dependencies"]["train"]


def test_this_environment_has_one_onnxruntime() -> None:
    assert not both_onnxruntimes_installed()


@pytest.mark.parametrize(("ort", "other"), [("cpu", "onnxruntime-gpu"), ("gpu", "onnxruntime")])
def test_make_removes_the_other_onnxruntime_before_installing(
    tmp_path: Path, ort: str, other: str
) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(
        [make, "-n", "-C", str(ROOT), "install", f"ORT={ort}", f"VENV={tmp_path / 'venv'}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    uninstall = plan.index(f"pip uninstall -y -q {other}")
    install = plan.index(f"pip install -q -e '.[{ort}]'")
    assert uninstall < install
