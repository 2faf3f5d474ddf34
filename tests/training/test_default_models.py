"""The committed default models in models/: what `make serve` serves without torch.

Each preset folder must hold a config that parses into the project's
ModelConfig, labels matching the data set, and a version that onnxruntime loads
with the contract's signature and that meets the preset's accuracy target on
the held-out split (regenerate with `make models`).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from serving._generated import model_config_pb2 as mc
from training import datasets
from training.presets import PRESETS

from .targets import TARGETS

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_committed_model_is_servable_and_accurate(preset: str) -> None:
    cfg = PRESETS[preset]
    folder = MODELS / preset
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    assert versions == [1], "regenerate with `make models` (one version per preset)"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    split = datasets.load(cfg.dataset, n_samples=cfg.n_samples, seed=cfg.seed)
    assert config.name == preset and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == cfg.max_batch_size
    assert list(config.input[0].dims) == list(split.input_shape)
    assert [list(o.dims) for o in config.output] == [[split.classes]] * 2
    assert config.output[1].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().splitlines() == list(split.labels)

    path = folder / "1" / "model.onnx"
    proto = onnx.load(str(path))
    assert proto.ir_version == 10
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("input", "tensor(float)")]
    assert [o.name for o in sess.get_outputs()] == ["logits", "probabilities"]
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # dynamic batch
    logits, _ = sess.run(None, {"input": split.X_val})
    accuracy = float((logits.argmax(1) == split.y_val).mean())
    assert accuracy >= TARGETS[preset]
