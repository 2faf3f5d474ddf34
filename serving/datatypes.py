"""The one table of tensor datatypes: each KServe V2 datatype with its numpy
dtype, onnxruntime type string, config.pbtxt ``DataType`` enum name and the
gRPC ``InferTensorContents`` field that carries it typed (None: raw bytes
only). Every other datatype mapping in serving/ is derived from this.

BYTES is a numpy object array of ``bytes``; BF16 has no numpy type and
travels as its raw uint16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Datatype:
    name: str
    numpy: np.dtype[Any]
    ort: str
    config: str
    contents: str | None


def _row(name: str, dtype: Any, ort: str, config: str, contents: str | None) -> Datatype:
    return Datatype(name, np.dtype(dtype), ort, config, contents)


DATATYPES: tuple[Datatype, ...] = (
    _row("BOOL", np.bool_, "tensor(bool)", "TYPE_BOOL", "bool_contents"),
    _row("UINT8", np.uint8, "tensor(uint8)", "TYPE_UINT8", "uint_contents"),
    _row("UINT16", np.uint16, "tensor(uint16)", "TYPE_UINT16", "uint_contents"),
    _row("UINT32", np.uint32, "tensor(uint32)", "TYPE_UINT32", "uint_contents"),
    _row("UINT64", np.uint64, "tensor(uint64)", "TYPE_UINT64", "uint64_contents"),
    _row("INT8", np.int8, "tensor(int8)", "TYPE_INT8", "int_contents"),
    _row("INT16", np.int16, "tensor(int16)", "TYPE_INT16", "int_contents"),
    _row("INT32", np.int32, "tensor(int32)", "TYPE_INT32", "int_contents"),
    _row("INT64", np.int64, "tensor(int64)", "TYPE_INT64", "int64_contents"),
    _row("FP16", np.float16, "tensor(float16)", "TYPE_FP16", None),
    _row("FP32", np.float32, "tensor(float)", "TYPE_FP32", "fp32_contents"),
    _row("FP64", np.float64, "tensor(double)", "TYPE_FP64", "fp64_contents"),
    _row("BF16", np.uint16, "tensor(bfloat16)", "TYPE_BF16", None),
    _row("BYTES", np.object_, "tensor(string)", "TYPE_STRING", "bytes_contents"),
)

#: KServe V2 datatype name -> numpy dtype.
DTYPE_BY_DATATYPE: dict[str, np.dtype[Any]] = {d.name: d.numpy for d in DATATYPES}
#: numpy dtype -> KServe V2 datatype name (BF16 is never inferred).
DATATYPE_BY_DTYPE: dict[np.dtype[Any], str] = {
    d.numpy: d.name for d in DATATYPES if d.name != "BF16"
}
#: onnxruntime's tensor type string -> KServe V2 datatype.
DATATYPE_BY_ORT_TYPE: dict[str, str] = {d.ort: d.name for d in DATATYPES}
#: config DataType enum name <-> KServe V2 datatype name.
DATATYPE_BY_CONFIG: dict[str, str] = {d.config: d.name for d in DATATYPES}
CONFIG_BY_DATATYPE: dict[str, str] = {d.name: d.config for d in DATATYPES}
#: datatype -> the InferTensorContents field that carries it typed.
CONTENTS_FIELD: dict[str, str] = {d.name: d.contents for d in DATATYPES if d.contents}
