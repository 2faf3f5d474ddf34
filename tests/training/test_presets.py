"""Every preset trains to its held-out accuracy target and exports a model that
onnxruntime loads with the contract's signature, plus its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from serving._generated import model_config_pb2 as mc
from training import datasets
from training.pipeline import run
from training.presets import PRESETS

from .targets import TARGETS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_contracts_five_presets() -> None:
    assert list(PRESETS) == list(TARGETS)
    assert PRESETS["mlp-circle"].hidden == (8,) * 6
    assert (PRESETS["mlp-circle"].activation, PRESETS["mlp-circle"].optimizer) == ("relu", "adam")
    assert PRESETS["perceptron-linear"].model == "perceptron"
    assert (PRESETS["digits-cnn"].model, PRESETS["digits-cnn"].dataset) == ("cnn", "digits")


@pytest.mark.parametrize("preset", list(TARGETS))
def test_preset_reaches_target_and_exports_a_servable_model(preset: str, tmp_path: Path) -> None:
    cfg = PRESETS[preset]
    repo, runs = tmp_path / "models", tmp_path / "runs"
    outcome = run(cfg, repository=repo, runs_dir=runs, progress=False, log=lambda _: None)

    # accuracy on the held-out split, recomputed through onnxruntime
    split = datasets.load(cfg.dataset, n_samples=cfg.n_samples, seed=cfg.seed)
    model_path = repo / preset / "1" / "model.onnx"
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits, probs = sess.run(None, {"input": split.X_val})
    accuracy = float((logits.argmax(1) == split.y_val).mean())
    assert accuracy >= TARGETS[preset], f"{preset}: held-out accuracy {accuracy:.4f}"
    assert outcome.val_accuracy == pytest.approx(accuracy)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    # the contract's signature: one FP32 input, two FP32 outputs, dynamic batch
    shape = [1, 8, 8] if cfg.dataset == "digits" else [2]
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("input", "tensor(float)", shape)
    assert [(o.name, o.type, o.shape[1:]) for o in sess.get_outputs()] == [
        ("logits", "tensor(float)", [split.classes]),
        ("probabilities", "tensor(float)", [split.classes]),
    ]
    for batch in (1, 7):
        out = sess.run(None, {"input": split.X_val[:batch]})
        assert [o.shape for o in out] == [(batch, split.classes)] * 2

    # repository files
    config = text_format.Parse((repo / preset / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == preset and config.platform == "onnxruntime_onnx"
    assert list(config.input[0].dims) == shape
    labels = (repo / preset / "labels.txt").read_text().splitlines()
    assert labels == list(split.labels)

    # report beside the version, under runs/<name>/v1
    report = runs / preset / "v1"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["version"] == 1 and metrics["seed"] == cfg.seed
    assert metrics["val"]["accuracy"] == pytest.approx(accuracy)
    assert metrics["parity"]["passed"] is True
    assert metrics["parity"]["max_abs_diff_logits"] <= 1e-5
    assert metrics["parity"]["argmax_agreement"] == metrics["parity"]["samples"] == len(split.y_val)
    assert (metrics["onnx"]["opset"], metrics["onnx"]["ir_version"]) == (18, 10)
    assert metrics["parameters"] > 0 and metrics["config"]["name"] == preset
    expected = {"loss.png"}
    if cfg.dataset != "digits":
        expected.add("decision_boundary.png")
    else:
        expected.add("confusion_matrix.png")
    if cfg.model != "perceptron":
        expected.add("gradients.png")
        assert len(metrics["history"]["grad_magnitude"]) == cfg.epochs
    else:
        assert metrics["perceptron"]["converged"] is True
        assert metrics["perceptron"]["mistakes_per_epoch"][-1] == 0
    assert {p.name for p in report.glob("*.png")} == expected
    for png in expected:
        data = (report / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
