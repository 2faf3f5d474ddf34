"""Ensembles in Triton's layout for tests, scripts and docs: a standardiser
ONNX graph (``(raw - mean) / std``) and the config.pbtxt of an ensemble that
feeds it into a classifier, plus a writer for any ensemble config.

    <repo>/standardiser/1/model.onnx     raw [-1, F] FP32 -> standardised [-1, F] FP32
    <repo>/<ensemble>/config.pbtxt       platform: "ensemble", ensemble_scheduling
    <repo>/<ensemble>/1/                 empty: an ensemble has no file of its own
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from devtools.onnx_models import IR_VERSION, OPSET


def standardiser(mean: Sequence[float], std: Sequence[float]) -> onnx.ModelProto:
    """``standardised = (raw - mean) / std``, per feature; dynamic batch."""
    features = len(mean)
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["raw", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["standardised"]),
        ],
        "standardiser",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("standardised", TensorProto.FLOAT, ["batch", features])],
        [
            numpy_helper.from_array(np.asarray(mean, np.float32), "mean"),
            numpy_helper.from_array(np.asarray(std, np.float32), "std"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def standardiser_config(name: str, features: int, max_batch_size: int = 16) -> str:
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "raw" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "standardised" data_type: TYPE_FP32 dims: [ {features} ] }} ]
dynamic_batching {{ }}
"""


def step_text(
    model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1
) -> str:
    """One ``step`` of ensemble_scheduling: step tensor -> ensemble tensor maps."""
    maps = "".join(f'    input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
    maps += "".join(f'    output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
    return f'  {{\n    model_name: "{model}"\n    model_version: {version}\n{maps}  }}'


def ensemble_config(
    name: str,
    inputs: Sequence[tuple[str, int]],
    outputs: Sequence[tuple[str, int]],
    steps: Sequence[str],
    max_batch_size: int = 16,
    labels: str = "",
) -> str:
    """An ensemble's config.pbtxt: FP32 ``(name, width)`` inputs and outputs
    (``labels`` names the label file of the last output), and ``steps``
    from ``step_text``."""

    def tensors(items: Sequence[tuple[str, int]], label: str = "") -> str:
        rows = [f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {w} ] }}' for n, w in items]
        if label:
            rows[-1] = rows[-1][:-2] + f' label_filename: "{label}" }}'
        return ",\n".join(rows)

    joined = ",\n".join(steps)
    return f"""name: "{name}"
platform: "ensemble"
max_batch_size: {max_batch_size}
input [
{tensors(inputs)}
]
output [
{tensors(outputs, labels)}
]
ensemble_scheduling {{
  step [
{joined}
  ]
}}
"""


def write_ensemble(repo: Path, name: str, config: str, labels: Sequence[str] = ()) -> Path:
    """``repo/name/config.pbtxt`` and the empty version folder ``1/``."""
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config)
    if labels:
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return folder


def write_pipeline(
    repo: Path,
    name: str,
    classifier: str,
    mean: Sequence[float],
    std: Sequence[float],
    classes: int,
    labels: Sequence[str] = (),
    max_batch_size: int = 16,
    standardiser_name: str = "standardiser",
) -> Path:
    """A standardiser model (``standardiser_name``) and ensemble ``name``: raw ``input`` ->
    standardiser -> ``classifier`` (whose input is ``input``) -> ``logits``
    and ``probabilities``. The classifier must already be in ``repo``."""
    features = len(mean)
    folder = repo / standardiser_name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(standardiser(mean, std), str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(
        standardiser_config(standardiser_name, features, max_batch_size)
    )
    steps = [
        step_text(standardiser_name, {"raw": "input"}, {"standardised": "scaled"}),
        step_text(
            classifier,
            {"input": "scaled"},
            {"logits": "logits", "probabilities": "probabilities"},
        ),
    ]
    config = ensemble_config(
        name,
        [("input", features)],
        [("logits", classes), ("probabilities", classes)],
        steps,
        max_batch_size,
        labels="labels.txt" if labels else "",
    )
    return write_ensemble(repo, name, config, labels)
