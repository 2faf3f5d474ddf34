"""Faster variants of an exported model, built with ONNX Runtime's own tools.

Each builder takes the FP32 file's bytes and returns the variant's bytes with
the same signature (FP32 ``input`` -> FP32 ``logits``, ``probabilities``), the
IR version pinned to `training.export.IR_VERSION` (onnx 1.23 would write IR
14, which onnxruntime rejects), the source's metadata kept (its training
record) and `training.provenance.VARIANT_KEY` set. Nothing here decides
whether a variant is kept: `training.optimize` gates it on held-out data.

- ``opt``: ONNX Runtime's offline graph optimization
  (``SessionOptions.optimized_model_filepath``) at ``ORT_ENABLE_BASIC``:
  constant folding, redundant-node elimination and semantics-preserving
  fusions, which ONNX Runtime runs before graph partitioning, so they apply
  to every execution provider and the file stays plain ONNX that runs on CPU,
  CUDA and in Triton's onnxruntime backend. ``EXTENDED`` fusions run after
  partitioning, only on nodes given to the CPU or CUDA provider, and write
  ``com.microsoft`` fused operators chosen for the provider of the session
  that saved the file (ONNX Runtime's "Graph Optimizations" page). The server's
  sessions apply ``ORT_ENABLE_ALL`` online anyway: what ``opt`` saves is the
  work at load, not per request.
- ``int8``: ``onnxruntime.quantization.quantize_static`` in QDQ format,
  signed INT8 activations and weights, per-channel weights, MinMax
  calibration on rows of the training split. The final Softmax is left in
  FP32 so ``probabilities`` keep their resolution; the normalisation
  (Sub/Div) stays FP32 as the quantizer leaves it. ``keep_input_layer``
  leaves the first Gemm/MatMul/Conv, the one that reads the raw features,
  in FP32 too: `training.optimize` asks for it when the fully quantized
  model fails the accuracy gate (a 2-D input on 256 levels cannot place the
  spiral's boundary: mlp-spiral 94.4% quantized, 98.4% with its first layer
  kept, as FP32; 256 calibration rows).
- ``fp16``: ``onnxconverter_common.float16.convert_float_to_float16`` with
  ``keep_io_types=True`` (Cast nodes at the edges, so clients still send and
  get FP32); Softmax stays FP32 (the converter's default block list). Meant
  for the CUDA provider; the CPU provider loads and runs it too, which is how
  it is gated here.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from training.provenance import VARIANT_KEY

__all__ = ["KINDS", "VariantError", "build"]

INPUT_NAME = "input"
#: The operators whose first one ``keep_input_layer`` keeps in FP32.
_COMPUTE = ("Gemm", "MatMul", "Conv")
#: Rows per calibration batch (the calibrator's memory grows with each batch's size).
CALIBRATION_BATCH = 64


class VariantError(Exception):
    """ONNX Runtime's tools could not build the variant (the message says why)."""


def build(
    kind: str,
    onnx_bytes: bytes,
    calibration: np.ndarray | None = None,
    *,
    keep_input_layer: bool = False,
) -> bytes:
    """The ``kind`` (one of `KINDS`) variant of ``onnx_bytes``; raises
    `VariantError`. ``keep_input_layer``: int8 only, the first compute layer
    stays FP32."""
    import onnx

    try:
        if kind == "int8":
            data = _int8(onnx_bytes, calibration, keep_input_layer)
        else:
            data = KINDS[kind](onnx_bytes, calibration)
    except VariantError:
        raise
    except Exception as exc:  # the quantizer and converter raise anything at all
        raise VariantError(f"{type(exc).__name__}: {exc}") from exc
    return _finish(onnx, data, onnx.load_from_string(onnx_bytes), kind)


def _finish(onnx: Any, data: bytes, source: Any, kind: str) -> bytes:
    from training.export import IR_VERSION

    proto = onnx.load_from_string(data)
    proto.ir_version = min(proto.ir_version or IR_VERSION, IR_VERSION)
    proto.producer_name = "dlserve"
    del proto.metadata_props[:]
    for entry in source.metadata_props:
        if entry.key != VARIANT_KEY:
            proto.metadata_props.add(key=entry.key, value=entry.value)
    proto.metadata_props.add(key=VARIANT_KEY, value=kind)
    out: bytes = proto.SerializeToString()
    try:
        onnx.checker.check_model(onnx.load_from_string(out), full_check=True)
    except Exception as exc:
        raise VariantError(f"the {kind} model fails onnx.checker: {exc}") from exc
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs advice (pre-processing, ...) on the root logger: not for a CLI."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _graph_optimized(onnx_bytes: bytes, _: np.ndarray | None) -> bytes:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dlserve-opt-") as tmp:
        out = Path(tmp) / "model.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return out.read_bytes()


def _int8(
    onnx_bytes: bytes, calibration: np.ndarray | None, keep_input_layer: bool = False
) -> bytes:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration is None or len(calibration) == 0:
        raise VariantError("int8 needs calibration rows")

    class Rows(CalibrationDataReader):  # type: ignore[misc]
        """The calibration rows in batches of `CALIBRATION_BATCH`."""

        def __init__(self, X: np.ndarray) -> None:
            x = np.ascontiguousarray(X, dtype=np.float32)
            step = CALIBRATION_BATCH
            self._batches = iter([{INPUT_NAME: x[i : i + step]} for i in range(0, len(x), step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    reader = Rows(calibration)
    source = onnx.load_from_string(onnx_bytes)
    for i, node in enumerate(source.graph.node):  # exclusion is by name: "" would match all
        node.name = node.name or f"{node.op_type}_{i}"
    fp32 = [n.name for n in source.graph.node if n.op_type == "Softmax"]
    if keep_input_layer:
        fp32 += [n.name for n in source.graph.node if n.op_type in _COMPUTE][:1]
    with tempfile.TemporaryDirectory(prefix="dlserve-int8-") as tmp, _quiet():
        src, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(source.SerializeToString())
        quantize_static(
            str(src),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=fp32,
        )
        return out.read_bytes()


def _fp16(onnx_bytes: bytes, _: np.ndarray | None) -> bytes:
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise VariantError(
            "fp16 needs onnxconverter-common (in the train extra): pip install -e '.[train]'"
        ) from None
    proto = onnx.load_from_string(onnx_bytes)
    # The exporter's value_info would contradict the converter's types, and the
    # converter's own can be wrong where a graph output feeds a blocked op
    # (logits -> Softmax): let shape inference rebuild them.
    del proto.graph.value_info[:]
    converted = float16.convert_float_to_float16(proto, keep_io_types=True)
    del converted.graph.value_info[:]
    out: bytes = converted.SerializeToString()
    return out


KINDS: dict[str, Callable[[bytes, np.ndarray | None], bytes]] = {
    "int8": _int8,
    "fp16": _fp16,
    "opt": _graph_optimized,
}
