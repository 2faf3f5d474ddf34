"""Checks a request against a model's config before any work is done.

Everything that depends only on the config is computed once at load time
(``ModelSignature``); ``validate`` then does the per-request checks in the
order that keeps them cheap: names, datatype, rank, dims, batch bound, then
element count against the data actually received. Nothing here allocates in
proportion to a declared shape: a huge declared dim fails the size check
against the bytes that arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from serving.errors import InvalidInput
from serving.tensors import DTYPE_BY_DATATYPE, RequestedOutput, Tensor


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    #: dims without the batch dimension when the model batches; -1 = any.
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True, slots=True)
class OutputSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]
    labels: tuple[str, ...] | None = None


class ModelSignature:
    """The per-model facts validation needs, prepared at load time."""

    def __init__(
        self,
        model: str,
        max_batch_size: int,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[OutputSpec],
    ) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.batching = max_batch_size > 0
        self.inputs = {spec.name: spec for spec in inputs}
        self.required = frozenset(s.name for s in inputs if not s.optional)
        self.outputs = {spec.name: spec for spec in outputs}
        self.output_names = tuple(spec.name for spec in outputs)
        self._expected = {
            s.name: (f"[-1, {', '.join(map(str, s.dims))}]" if self.batching else str(list(s.dims)))
            for s in inputs
        }

    def validate(self, inputs: Sequence[Tensor]) -> tuple[dict[str, np.ndarray], int]:
        """Shaped arrays by input name, and the batch size (1 if not batching)."""
        feeds: dict[str, np.ndarray] = {}
        batch = -1
        for tensor in inputs:
            spec = self.inputs.get(tensor.name)
            if spec is None:
                raise InvalidInput(
                    f"model '{self.model}' has no input '{tensor.name}'; "
                    f"its inputs are {sorted(self.inputs)}"
                )
            if tensor.name in feeds:
                raise InvalidInput(f"input '{tensor.name}' is given more than once")
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"input '{tensor.name}' must be {spec.datatype}, got {tensor.datatype}"
                )
            shape = tensor.shape
            for d in shape:
                if d <= 0:
                    raise InvalidInput(
                        f"input '{tensor.name}' has shape {list(shape)}: every dimension must "
                        f"be positive (a batch needs at least one row)"
                    )
            dims = shape[1:] if self.batching else shape
            if len(dims) != len(spec.dims) or any(
                w != -1 and w != d for w, d in zip(spec.dims, dims, strict=False)
            ):
                raise InvalidInput(
                    f"input '{tensor.name}' has shape {list(shape)}, expected "
                    f"{self._expected[tensor.name]}"
                )
            if self.batching:
                rows = shape[0]
                if rows > self.max_batch_size:
                    raise InvalidInput(
                        f"input '{tensor.name}' has batch size {rows}, over the model's "
                        f"max_batch_size {self.max_batch_size}"
                    )
                if batch == -1:
                    batch = rows
                elif rows != batch:
                    raise InvalidInput(
                        f"inputs disagree on the batch size: '{tensor.name}' has {rows} rows, "
                        f"an earlier input has {batch}"
                    )
            data = tensor.data
            count = 1
            for d in shape:
                count *= d
            if data.size != count:
                if spec.datatype == "BYTES":  # elements of any length: count them
                    raise InvalidInput(
                        f"input '{tensor.name}' with shape {list(shape)} needs {count} BYTES "
                        f"elements, got {data.size}"
                    )
                if tensor.from_raw:
                    item = DTYPE_BY_DATATYPE[spec.datatype].itemsize
                    raise InvalidInput(
                        f"input '{tensor.name}' with shape {list(shape)} needs "
                        f"{count * item} bytes of {spec.datatype} raw content, "
                        f"got {data.size * item}"
                    )
                raise InvalidInput(
                    f"input '{tensor.name}' with shape {list(shape)} needs {count} elements, "
                    f"got {data.size}"
                )
            feeds[tensor.name] = data.reshape(shape)
        missing = self.required.difference(feeds)
        if missing:
            raise InvalidInput(
                f"model '{self.model}' needs input(s) {sorted(missing)}; got {sorted(feeds)}"
            )
        return feeds, (batch if self.batching else 1)

    def check_outputs(self, requested: Sequence[RequestedOutput]) -> None:
        seen: set[str] = set()
        for out in requested:
            spec = self.outputs.get(out.name)
            if spec is None:
                raise InvalidInput(
                    f"model '{self.model}' has no output '{out.name}'; "
                    f"its outputs are {list(self.output_names)}"
                )
            if out.name in seen:
                raise InvalidInput(f"output '{out.name}' is requested more than once")
            seen.add(out.name)
            if out.class_count < 0:
                raise InvalidInput(
                    f"output '{out.name}': classification needs class_count >= 1, "
                    f"got {out.class_count}"
                )
