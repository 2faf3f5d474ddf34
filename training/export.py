"""ONNX export, parity check and atomic writes into a Triton-style model repository.

Pipeline (`export_to_repository`):

1. `to_onnx`: ``torch.onnx.export(dynamo=True)`` of ``Exportable(model)`` with a
   dynamic batch axis: one FP32 input ``input`` and two FP32 outputs ``logits``
   and ``probabilities``. The torch.export-based exporter is PyTorch's default
   and maintained path (the TorchScript one is deprecated); its onnxscript
   optimiser folds ``Flatten`` and constants, so the graph is just
   Sub/Div (normalisation) -> Gemm/Conv/Relu... -> Softmax. The model is kept
   in memory, its IR version pinned to `IR_VERSION` (onnxruntime 1.18+ loads it)
   and checked with ``onnx.checker`` (full check, with shape inference).
2. `check_parity`: onnxruntime vs PyTorch on held-out inputs; max |Δ| on the
   logits must be <= tolerance (1e-5) and every argmax must agree, otherwise
   `ParityError` and nothing is written.
3. `write_version` / `write_text_atomic`: ``labels.txt`` and ``config.pbtxt``
   are replaced atomically (temp file + ``os.replace``), then the version is
   built in ``<model>/.dlserve-tmp-*/`` and renamed to ``<model>/<N+1>/``, so a
   server scanning the repository never sees a half-written version.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from training.models import Exportable
from training.repository import (
    TMP_PREFIX,
    ExportError,
    RepositoryError,
    build_config,
    check_repository_writable,
    latest_version,
    roll_back,
    snapshot,
    write_text_atomic,
    write_version,
)

__all__ = [
    "IR_VERSION",
    "OPSET",
    "PARITY_TOLERANCE",
    "TMP_PREFIX",
    "ExportError",
    "ExportResult",
    "Parity",
    "ParityError",
    "RepositoryError",
    "build_config",
    "check_parity",
    "check_repository_writable",
    "export_to_repository",
    "latest_version",
    "to_onnx",
    "write_text_atomic",
    "write_version",
]

OPSET = 18
#: onnx 1.23 would write IR 14 by default; onnxruntime 1.18..1.32 all load IR 10.
IR_VERSION = 10
PARITY_TOLERANCE = 1e-5
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")


class ParityError(ExportError):
    """The ONNX model does not compute what PyTorch computed: export refused."""

    def __init__(self, message: str, parity: Parity) -> None:
        super().__init__(message)
        self.parity = parity


@dataclass(frozen=True)
class Parity:
    """onnxruntime vs PyTorch on ``samples`` held-out inputs."""

    samples: int
    max_abs_diff_logits: float
    max_abs_diff_probabilities: float
    argmax_agreement: int  # how many of `samples` have the same argmax
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff_logits <= self.tolerance and self.argmax_agreement == self.samples

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    version: int
    model_path: Path
    opset: int
    ir_version: int
    onnx_bytes: int
    parity: Parity
    export_s: float


def _quiet_exporter() -> None:
    # The dynamo exporter logs warnings about optional torchvision ops and prints
    # progress lines; a CLI wants neither.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)


def to_onnx(
    model: nn.Module,
    example: np.ndarray,
    opset: int = OPSET,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """Serialized ONNX of ``Exportable(model)`` (``model`` maps raw input to logits).

    ``example`` is a batch of real inputs ``[b, ...]`` (b >= 2, so the batch
    dimension is not specialised); the batch axis is exported as dynamic.
    ``metadata`` goes into the model's ``metadata_props`` (the training run's
    record, `training.provenance`).
    """
    import onnx

    _quiet_exporter()
    wrapped = Exportable(model).eval()
    x = torch.as_tensor(np.asarray(example[: max(2, min(len(example), 8))]), dtype=torch.float32)
    if x.shape[0] < 2:
        raise ExportError("export needs an example batch of at least 2 inputs")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (x,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, IR_VERSION) if proto.ir_version else IR_VERSION
    proto.producer_name = "dlserve"
    _strip_debug_metadata(proto)
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {exc}") from exc
    _check_signature(data, tuple(x.shape[1:]))
    return data


def _strip_debug_metadata(proto: Any) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with
    absolute paths, FX node dumps): it is a third of a small model's bytes and
    would make the file depend on where the checkout lives."""
    graph = proto.graph
    for item in (*graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del item.metadata_props[:]
        item.doc_string = ""


def _session(onnx_bytes: bytes):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def _check_signature(onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
    """The contract's signature: input ``[-1, *shape]``, outputs ``[-1, classes]``, all FP32."""
    sess = _session(onnx_bytes)
    ins, outs = sess.get_inputs(), sess.get_outputs()
    problems = []
    if [i.name for i in ins] != [INPUT_NAME] or ins[0].type != "tensor(float)":
        problems.append(f"inputs {[(i.name, i.type) for i in ins]}")
    elif isinstance(ins[0].shape[0], int) or list(ins[0].shape[1:]) != list(input_shape):
        problems.append(f"input shape {ins[0].shape}")
    if [o.name for o in outs] != list(OUTPUT_NAMES) or any(o.type != "tensor(float)" for o in outs):
        problems.append(f"outputs {[(o.name, o.type) for o in outs]}")
    elif any(isinstance(o.shape[0], int) or len(o.shape) != 2 for o in outs):
        problems.append(f"output shapes {[o.shape for o in outs]}")
    if problems:
        raise ExportError(
            "exported graph does not have the contract's signature: " + "; ".join(problems)
        )


def check_parity(
    model: nn.Module, onnx_bytes: bytes, X: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> Parity:
    """Run held-out inputs ``X`` through onnxruntime and PyTorch and compare."""
    x = np.ascontiguousarray(X, dtype=np.float32)
    logits_ort, probs_ort = _session(onnx_bytes).run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    wrapped = Exportable(model).eval()
    with torch.no_grad():
        logits_pt, probs_pt = (t.numpy() for t in wrapped(torch.from_numpy(x)))
    return Parity(
        samples=len(x),
        max_abs_diff_logits=float(np.abs(logits_ort - logits_pt).max()),
        max_abs_diff_probabilities=float(np.abs(probs_ort - probs_pt).max()),
        argmax_agreement=int((logits_ort.argmax(1) == logits_pt.argmax(1)).sum()),
        tolerance=float(tolerance),
    )


def export_to_repository(
    model: nn.Module,
    *,
    repository: Path,
    name: str,
    labels: Sequence[str],
    example: np.ndarray,
    X_parity: np.ndarray,
    max_batch_size: int,
    tolerance: float = PARITY_TOLERANCE,
    opset: int = OPSET,
    metadata: Mapping[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` (raw input -> logits), verify parity, add a version.

    Raises `ParityError` (nothing written) when onnxruntime and PyTorch disagree,
    `RepositoryError` when the repository cannot be written.
    """
    import onnx

    started = time.perf_counter()
    model = model.eval()
    data = to_onnx(model, example, opset=opset, metadata=metadata)
    parity = check_parity(model, data, X_parity, tolerance)
    if not parity.passed:
        raise ParityError(
            f"export refused: ONNX Runtime and PyTorch disagree on {parity.samples} held-out "
            f"inputs (max |delta logits| {parity.max_abs_diff_logits:.3g} > {tolerance:g} "
            f"or argmax agreement {parity.argmax_agreement}/{parity.samples}); "
            "nothing was written",
            parity,
        )
    model_dir = repository / name
    check_repository_writable(repository, name)
    config_path = model_dir / "config.pbtxt"
    existing = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    input_shape = tuple(int(d) for d in np.asarray(example).shape[1:])
    config_text = build_config(name, input_shape, len(labels), max_batch_size, existing)
    labels_path = model_dir / "labels.txt"
    created, previous = snapshot(model_dir)
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(labels_path, "".join(f"{label}\n" for label in labels))
        write_text_atomic(config_path, config_text)
        version = write_version(model_dir, data)
    except BaseException as exc:
        roll_back(model_dir, created, previous)
        if isinstance(exc, OSError):
            raise RepositoryError(f"cannot write to {model_dir}: {exc.strerror or exc}") from exc
        raise
    proto = onnx.load_from_string(data)
    return ExportResult(
        model_dir=model_dir,
        version=version,
        model_path=model_dir / str(version) / "model.onnx",
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        ir_version=int(proto.ir_version),
        onnx_bytes=len(data),
        parity=parity,
        export_s=time.perf_counter() - started,
    )
