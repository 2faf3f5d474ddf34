"""`dlserve train` end to end in a subprocess: versions, report location, bad input,
`--fresh` and `--all-presets`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dlserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DLSERVE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "dlserve", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_two_runs_of_a_preset_give_versions_1_and_2(tmp_path: Path) -> None:
    for expected in (1, 2):
        proc = dlserve("train", "--preset", "perceptron-linear", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"models/perceptron-linear/{expected}/model.onnx" in proc.stdout
        assert f"report runs/perceptron-linear/v{expected}/" in proc.stdout
    model_dir = tmp_path / "models" / "perceptron-linear"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert (tmp_path / "runs" / "perceptron-linear" / "v2" / "metrics.json").is_file()
    assert not list(tmp_path.rglob(".dlserve-tmp-*"))


def test_custom_model_with_overrides_and_custom_paths(tmp_path: Path) -> None:
    proc = dlserve(
        "train", "--name", "tiny-xor", "--dataset", "xor", "--model", "mlp",
        "--hidden", "6,6", "--activation", "tanh", "--optimizer", "momentum",
        "--lr", "0.05", "--epochs", "40", "--batch-size", "64", "--seed", "3",
        "--weight-decay", "0.0001", "--repository", "repo", "--runs-dir", "reports",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "repo" / "tiny-xor" / "1" / "model.onnx").is_file()
    metrics = (tmp_path / "reports" / "tiny-xor" / "v1" / "metrics.json").read_text()
    assert '"hidden": [\n      6,\n      6\n    ]' in metrics
    assert '"optimizer": "momentum"' in metrics


def test_dry_run_trains_one_batch_and_writes_nothing(tmp_path: Path) -> None:
    proc = dlserve("train", "--preset", "digits-cnn", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "mlp-moons"], "invalid choice: 'mlp-moons'"),
        (["--name", "m", "--dataset", "moons", "--model", "mlp"], "invalid choice: 'moons'"),
        (["--preset", "mlp-xor", "--activation", "swish"], "invalid choice: 'swish'"),
        (["--preset", "mlp-xor", "--epochs", "-1"], "--epochs: expected a positive integer"),
        (["--preset", "mlp-xor", "--epochs", "0"], "--epochs: expected a positive integer"),
        (["--preset", "mlp-xor", "--hidden", "8,,x"], "--hidden: expected comma-separated"),
        (["--preset", "mlp-xor", "--lr", "nan"], "--lr: expected a number > 0"),
        (["--name", "m", "--dataset", "xor"], "missing --model"),
        (["--name", "m", "--dataset", "circle", "--model", "cnn"], "needs --dataset digits"),
        (["--name", "m", "--dataset", "digits", "--model", "perceptron"], "two classes"),
        (["--name", "../evil", "--dataset", "xor", "--model", "mlp"], "model name"),
        (["--preset", "mlp-xor", "--repository", "afile/models"], "afile is not a directory"),
        (["--preset", "mlp-xor", "--runs-dir", "afile/runs"], "afile is not a directory"),
        (["--preset", "mlp-xor", "--repository", "repo"], "config.pbtxt does not parse (1:17"),
        (["--all-presets", "--preset", "mlp-xor"], "as defined: drop --preset"),
        (["--all-presets", "--epochs", "3", "--samples", "9"], "drop --epochs/--samples"),
        (["--all-presets", "--repository", "afile/models"], "afile is not a directory"),
        (["--preset", "mlp-xor", "--fresh", "--dry-run"], "--dry-run exports nothing"),
    ],
)
def test_bad_input_one_line_no_traceback_nothing_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "afile").write_text("a regular file\n")
    (tmp_path / "repo" / "mlp-xor").mkdir(parents=True)
    (tmp_path / "repo" / "mlp-xor" / "config.pbtxt").write_text("max_batch_size: {{{\n")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    proc = dlserve("train", *args, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert lines[0].startswith("dlserve train: error:")
    assert "Traceback" not in proc.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_help_does_not_import_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from dlserve.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.stdout.split() == ["False", "False"], proc.stderr
    assert dlserve("train", "--help", cwd=tmp_path).returncode == 0


def test_fresh_replaces_the_model_folder_with_version_1(tmp_path: Path) -> None:
    model_dir = tmp_path / "m" / "perceptron-linear"
    for version in ("3", "4"):  # an older model with two versions and its own config
        (model_dir / version).mkdir(parents=True)
        (model_dir / version / "model.onnx").write_bytes(b"old")
    (model_dir / "config.pbtxt").write_text("this is not a config\n")
    cmd = ("train", "--preset", "perceptron-linear", "--repository", "m", "--no-progress")
    proc = dlserve(*cmd, "--fresh", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert 'name: "perceptron-linear"' in (model_dir / "config.pbtxt").read_text()
    assert "m/perceptron-linear/1/model.onnx" in proc.stdout
    assert "m/perceptron-linear now holds only version 1" in proc.stdout
    assert ".dlserve-tmp-" not in proc.stdout
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["perceptron-linear"]
    metrics = (tmp_path / "runs" / "perceptron-linear" / "v1" / "metrics.json").read_text()
    assert '"model_path": "m/perceptron-linear/1/model.onnx"' in metrics


def test_all_presets_dry_run_trains_each_preset_and_writes_nothing(tmp_path: Path) -> None:
    proc = dlserve("train", "--all-presets", "--dry-run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("dry run") == 5, proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_train_without_torch_says_which_extra_to_install(tmp_path: Path) -> None:
    # A serving-only install: make `import torch` fail the way a missing package does.
    code = (
        "import sys, importlib.abc\n"
        "class NoTorch(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\")\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from dlserve.cli import main\n"
        "sys.exit(main(['train', '--preset', 'mlp-xor']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "dlserve train: error: training needs the train extra: pip install -e '.[train]'"
    )
    assert list(tmp_path.iterdir()) == []
