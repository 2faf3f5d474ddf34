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
