"""Export: config.pbtxt, atomic repository writes, ONNX signature, parity, refusal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from serving._generated import model_config_pb2 as mc
from training import datasets, engine
from training.export import (
    ParityError,
    RepositoryError,
    build_config,
    check_parity,
    check_repository_writable,
    export_to_repository,
    latest_version,
    to_onnx,
    write_text_atomic,
    write_version,
)
from training.models import MLP, with_normalization


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content (None for folders)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def circle() -> datasets.Split:
    return datasets.load("circle", n_samples=200, seed=0)


@pytest.fixture(scope="module")
def trained(circle: datasets.Split) -> torch.nn.Module:
    engine.seed_everything(0)
    model = with_normalization(MLP(2, [8, 8], 2), circle.X_train)
    engine.fit(
        model, circle.X_train, circle.y_train, circle.X_val, circle.y_val,
        epochs=60, progress=False, label_smoothing=0.05,
    )  # fmt: skip
    return model.eval()


@pytest.fixture(scope="module")
def onnx_bytes(trained: torch.nn.Module, circle: datasets.Split) -> bytes:
    return to_onnx(trained, circle.X_val)


class ExportsDifferently(torch.nn.Module):
    """A deliberately broken model: the exported graph adds 0.5 to the logits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if torch.onnx.is_in_onnx_export():
            logits = logits + 0.5
        return logits


def test_config_parses_into_the_projects_model_config() -> None:
    text = build_config("digits-cnn", (1, 8, 8), 10, 256)
    config = text_format.Parse(text, mc.ModelConfig())
    assert config.name == "digits-cnn" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", mc.TYPE_FP32, [1, 8, 8])
    ]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in config.output] == [
        ("logits", mc.TYPE_FP32, [10], ""),
        ("probabilities", mc.TYPE_FP32, [10], "labels.txt"),
    ]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, mc.ModelInstanceGroup.KIND_AUTO)
    ]
    assert config.version_policy.latest.num_versions == 1


def test_config_update_keeps_tuned_settings() -> None:
    tuned = text_format.Parse(build_config("m", (2,), 2, 1024), mc.ModelConfig())
    tuned.dynamic_batching.max_queue_delay_microseconds = 500
    tuned.instance_group[0].count = 2
    tuned.version_policy.all.SetInParent()
    text = build_config("m", (2,), 3, 64, existing=text_format.MessageToString(tuned))
    config = text_format.Parse(text, mc.ModelConfig())
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].count == 2
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert config.max_batch_size == 64 and list(config.output[1].dims) == [3]
    with pytest.raises(RepositoryError, match="does not parse"):
        build_config("m", (2,), 2, 8, existing="max_batch_size: {{{")


def test_versions_count_up_and_only_digit_folders_count(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    assert latest_version(model_dir) == 0
    assert write_version(model_dir, b"one") == 1
    (model_dir / "7-notes").mkdir()
    (model_dir / "report").mkdir()
    assert write_version(model_dir, b"two") == 2
    (model_dir / "9").mkdir()
    assert write_version(model_dir, b"ten") == 10
    assert (model_dir / "10" / "model.onnx").read_bytes() == b"ten"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "10", "2", "7-notes", "9", "report"]


def test_text_written_atomically_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    write_text_atomic(path, "a\n")
    write_text_atomic(path, "b\n")
    assert path.read_text() == "b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]


def test_repository_under_a_regular_file_is_refused_without_writing(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RepositoryError, match="not a directory"):
        check_repository_writable(tmp_path / "afile" / "models", "m")
    check_repository_writable(tmp_path / "new" / "deep" / "models", "m")  # creatable: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_exported_graph_has_the_contract_signature(
    trained: torch.nn.Module, circle: datasets.Split, onnx_bytes: bytes
) -> None:
    data = onnx_bytes
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type) == ("input", "tensor(float)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [2]
    outs = sess.get_outputs()
    assert [(o.name, o.type) for o in outs] == [
        ("logits", "tensor(float)"),
        ("probabilities", "tensor(float)"),
    ]
    assert all(isinstance(o.shape[0], str) and o.shape[1:] == [2] for o in outs)
    for batch in (1, 7):
        logits, probs = sess.run(None, {"input": circle.X_val[:batch]})
        assert logits.shape == probs.shape == (batch, 2)
    parity = check_parity(trained, data, circle.X_val)
    assert parity.passed and parity.samples == len(circle.X_val)
    assert parity.max_abs_diff_logits <= 1e-5
    assert parity.argmax_agreement == parity.samples


def test_export_adds_versions_with_config_and_labels(
    trained: torch.nn.Module, circle: datasets.Split, tmp_path: Path
) -> None:
    kw = dict(
        repository=tmp_path,
        name="circle",
        labels=circle.labels,
        example=circle.X_val,
        X_parity=circle.X_val,
        max_batch_size=32,
    )
    first = export_to_repository(trained, **kw)  # type: ignore[arg-type]
    second = export_to_repository(trained, **kw)  # type: ignore[arg-type]
    assert (first.version, second.version) == (1, 2)
    assert (first.opset, first.ir_version) == (18, 10)
    model_dir = tmp_path / "circle"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "config.pbtxt", "labels.txt"]
    assert (model_dir / "labels.txt").read_text() == "outside\ninside\n"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "circle" and config.max_batch_size == 32
    assert second.model_path.read_bytes() == first.model_path.read_bytes()
    assert oct(os.stat(model_dir / "2").st_mode & 0o777) != oct(0o700)  # readable by a server


def test_parity_failure_refuses_export_and_leaves_repository_untouched(
    trained: torch.nn.Module, circle: datasets.Split, tmp_path: Path
) -> None:
    kw = dict(
        repository=tmp_path / "models",
        labels=circle.labels,
        example=circle.X_val,
        X_parity=circle.X_val,
        max_batch_size=32,
    )
    export_to_repository(trained, name="circle", **kw)  # type: ignore[arg-type]
    before = _tree(tmp_path)
    broken = ExportsDifferently(trained)
    with pytest.raises(ParityError, match="export refused") as info:
        export_to_repository(broken, name="circle", **kw)  # type: ignore[arg-type]
    assert info.value.parity.max_abs_diff_logits == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(ParityError):
        export_to_repository(broken, name="fresh-model", **kw)  # type: ignore[arg-type]
    assert _tree(tmp_path) == before


def test_tolerance_is_the_parity_bound(
    trained: torch.nn.Module, circle: datasets.Split, onnx_bytes: bytes
) -> None:
    data = onnx_bytes
    measured = check_parity(trained, data, circle.X_val).max_abs_diff_logits
    tight = check_parity(trained, data, circle.X_val, tolerance=measured / 2)
    assert tight.passed == (measured == 0.0)
    assert check_parity(trained, data, circle.X_val, tolerance=measured).passed


def test_probabilities_match_softmax_of_torch_logits(
    trained: torch.nn.Module, circle: datasets.Split, onnx_bytes: bytes
) -> None:
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    _, probs = sess.run(None, {"input": circle.X_val})
    with torch.no_grad():
        expected = torch.softmax(trained(torch.from_numpy(circle.X_val)), 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
