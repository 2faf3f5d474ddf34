"""The repository the ensemble tests serve (Triton's layout), and the
answers they expect, computed by running the step graphs in onnxruntime.

    classifier   MLP 2 -> 3 classes (labels red/green/blue)
    second       MLP 2 -> 2 classes
    standardiser (raw - MEAN) / STD
    pipeline     input -> standardiser -> classifier -> logits, probabilities
    diamond      input -> standardiser -> classifier -> p_scaled, and in
                 parallel input -> second -> raw_logits (steps listed out of order)
    missing_step, cyclic, undefined, unproduced, bad_map: broken ensembles
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from devtools.ensembles import (
    ensemble_config,
    standardiser,
    step_text,
    write_ensemble,
    write_pipeline,
)
from devtools.onnx_models import mlp, write_model

MEAN = (0.5, -0.25)
STD = (2.0, 0.5)
LABELS = ("red", "green", "blue")
BROKEN = {
    "missing_step": "step model 'nowhere' is not ready",
    "cyclic": "the steps form a cycle",
    "undefined": "reads 'ghost', which is neither an ensemble input",
    "unproduced": "ensemble output(s) ['extra'] are produced by no step",
    "bad_map": "step model 'classifier' has no input 'nonexistent'",
}


def build_ensemble_repo(repo: Path) -> Path:
    write_model(repo, "classifier", model=mlp(classes=3, seed=11), labels=LABELS,
                max_batch_size=16)  # fmt: skip
    write_model(repo, "second", model=mlp(classes=2, seed=12), max_batch_size=16)
    write_pipeline(repo, "pipeline", "classifier", MEAN, STD, classes=3, labels=LABELS)
    scale = step_text("standardiser", {"raw": "input"}, {"standardised": "scaled"})
    diamond = [
        step_text("classifier", {"input": "scaled"}, {"probabilities": "p_scaled"}),
        step_text("second", {"input": "input"}, {"logits": "raw_logits"}),
        scale,
    ]
    write_ensemble(repo, "diamond", ensemble_config(
        "diamond", [("input", 2)], [("p_scaled", 3), ("raw_logits", 2)], diamond))  # fmt: skip
    one_in, one_out = [("input", 2)], [("scaled", 2)]
    broken = {
        "missing_step": [scale, step_text("nowhere", {"input": "scaled"}, {"logits": "x"})],
        "cyclic": [
            scale,
            step_text("second", {"input": "t"}, {"logits": "w"}),
            step_text("second", {"input": "w"}, {"logits": "t"}),
        ],
        "undefined": [scale, step_text("second", {"input": "ghost"}, {"logits": "x"})],
        "unproduced": [scale],
        "bad_map": [scale, step_text("classifier", {"nonexistent": "scaled"}, {"logits": "x"})],
    }
    for name, steps in broken.items():
        outputs = [*one_out, ("extra", 2)] if name == "unproduced" else one_out
        write_ensemble(repo, name, ensemble_config(name, one_in, outputs, steps))
    return repo


def _run(model_path: Path | bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    source = model_path if isinstance(model_path, bytes) else str(model_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def reference_of(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of an ONNX model run on ``input`` in onnxruntime."""
    return _run(model.SerializeToString(), {"input": x})


def pipeline_reference(repo: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """The pipeline's answer: the two ONNX files run in sequence."""
    scaled = _run(repo / "standardiser" / "1" / "model.onnx", {"raw": x})["standardised"]
    return _run(repo / "classifier" / "1" / "model.onnx", {"input": scaled})


def diamond_reference(repo: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    scaled = _run(standardiser(MEAN, STD).SerializeToString(), {"raw": x})["standardised"]
    p_scaled = _run(repo / "classifier" / "1" / "model.onnx", {"input": scaled})["probabilities"]
    raw_logits = _run(repo / "second" / "1" / "model.onnx", {"input": x})["logits"]
    return {"p_scaled": p_scaled, "raw_logits": raw_logits}
