"""Transport-agnostic request and response types over numpy.

No protobuf beyond the codec: the gRPC layer converts its messages into
these, and everything from ``service`` down works on them. They are plain
(not frozen) slotted dataclasses because they are built several times per
request and a frozen one costs four times as much to build; nothing mutates
them after construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: KServe V2 datatype name -> numpy dtype. BYTES is a numpy object array of
#: ``bytes``; BF16 has no numpy type and travels as its raw uint16 bits.
DTYPE_BY_DATATYPE: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(np.object_),
}

#: numpy dtype -> KServe V2 datatype name (BF16 is never inferred).
DATATYPE_BY_DTYPE: dict[np.dtype[Any], str] = {
    dt: name for name, dt in DTYPE_BY_DATATYPE.items() if name != "BF16"
}


@dataclass(slots=True)
class Tensor:
    """A named tensor. ``data`` is flat as decoded and shaped once validated."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    #: True when ``data`` came from raw bytes (error messages speak of bytes).
    from_raw: bool = False


@dataclass(slots=True)
class RequestedOutput:
    name: str
    #: >0 asks for the classification extension: the top ``class_count``
    #: entries as "score:index:label" strings.
    class_count: int = 0


@dataclass(slots=True)
class InferRequest:
    model_name: str
    model_version: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: tuple[Tensor, ...]
    id: str = ""
