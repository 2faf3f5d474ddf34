"""Checks a request against a model's config before any work is done.

Everything that depends only on the config is computed once at load time
(``ModelSignature``); ``validate`` then does the per-request checks in the
order that keeps them cheap: names, datatype, rank, dims, batch bound, then
element count against the data actually received. Nothing here allocates in
proportion to a declared shape: a huge declared dim fails the size check
against the bytes that arrived, and raw BYTES content is decoded here,
after the checks, never for a model that does not take BYTES.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from serving.datatypes import DTYPE_BY_DATATYPE
from serving.errors import InvalidInput
from serving.tensors import RequestedOutput, Tensor

#: The 4-byte little-endian length before each raw BYTES element.
_LENGTH = struct.Struct("<I")
#: The longest client-supplied name a message echoes whole. Messages travel in
#: a gRPC trailer (8 KiB by default): a 16 KiB name must not overflow it.
NAME_LIMIT = 64


def quoted(name: str) -> str:
    """A client-supplied name as messages show it: in quotes, and past
    NAME_LIMIT characters cut, with an ellipsis and the full length."""
    if len(name) <= NAME_LIMIT:
        return f"'{name}'"
    return f"'{name[:NAME_LIMIT]}...' ({len(name)} characters)"


def decode_bytes(
    buffer: bytes | np.ndarray,
    name: str,
    count: int | None = None,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Raw BYTES content (Triton's encoding: each element a 4-byte
    little-endian length, then that many bytes) as an object array of bytes.

    With ``count``, exactly that many elements must be there: a count the
    buffer cannot hold fails before any decoding, and decoding stops as soon
    as the content and the count disagree, so the work never exceeds what a
    valid request of that shape would need.
    """
    view = memoryview(buffer.data if isinstance(buffer, np.ndarray) else buffer).cast("B")
    end = len(view)
    where = f"input {quoted(name)}" + (f" with shape {list(shape)}" if shape is not None else "")
    if count is not None and count * 4 > end:
        raise InvalidInput(
            f"{where} needs {count} BYTES elements (at least {count * 4} bytes), got {end}"
        )
    items: list[bytes] = []
    offset = 0
    while offset < end:
        if count is not None and len(items) == count:
            raise InvalidInput(f"{where} has more raw content than the {count} BYTES elements")
        if offset + 4 > end:
            raise InvalidInput(
                f"input {quoted(name)}: BYTES raw content ends inside a length prefix"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(
                f"input {quoted(name)}: BYTES element of {length} bytes runs past the raw content"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidInput(f"{where} needs {count} BYTES elements, got {len(items)}")
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def raw_tensor(
    name: str, datatype: str, shape: tuple[int, ...], buffer: bytes | memoryview, what: str
) -> Tensor:
    """A tensor over raw bytes, with no copy (``np.frombuffer``). BYTES stay
    undecoded (uint8) until validation has checked them against the model:
    decoding here would cost a Python loop per element for any model.
    ``what`` names the bytes in errors ("raw content", "binary data")."""
    dtype = DTYPE_BY_DATATYPE[datatype]
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, np.frombuffer(buffer, dtype=np.uint8), True)
    if len(buffer) % dtype.itemsize:
        raise InvalidInput(
            f"input {quoted(name)}: {len(buffer)} bytes of {what} is not a whole "
            f"number of {datatype} elements ({dtype.itemsize} bytes each)"
        )
    return Tensor(name, datatype, shape, np.frombuffer(buffer, dtype=dtype), True)


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
        graph_inputs: frozenset[str] | None = None,
    ) -> None:
        """``graph_inputs``: the inputs the ONNX graph cannot run without; an
        ``optional`` config input among them is still required (Triton's
        optional means the graph has a default)."""
        self.model = model
        self.max_batch_size = max_batch_size
        self.batching = max_batch_size > 0
        self.inputs = {spec.name: spec for spec in inputs}
        self.required = frozenset(s.name for s in inputs if not s.optional)
        #: optional in the config, but the graph has no default for them
        self.graph_required = frozenset(
            s.name for s in inputs if s.optional and graph_inputs is not None
            and s.name in graph_inputs
        )  # fmt: skip
        self.required |= self.graph_required
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
                    f"model '{self.model}' has no input {quoted(tensor.name)}; "
                    f"its inputs are {sorted(self.inputs)}"
                )
            if tensor.name in feeds:
                raise InvalidInput(f"input {quoted(tensor.name)} is given more than once")
            if tensor.datatype != spec.datatype:
                raise InvalidInput(
                    f"input {quoted(tensor.name)} must be {spec.datatype}, got {tensor.datatype}"
                )
            shape = tensor.shape
            for d in shape:
                if d <= 0:
                    raise InvalidInput(
                        f"input {quoted(tensor.name)} has shape {list(shape)}: every dimension "
                        f"must be positive (a batch needs at least one row)"
                    )
            dims = shape[1:] if self.batching else shape
            if dims != spec.dims and (  # equal: the common case, one comparison
                len(dims) != len(spec.dims)
                or any(w != -1 and w != d for w, d in zip(spec.dims, dims, strict=False))
            ):
                raise InvalidInput(
                    f"input {quoted(tensor.name)} has shape {list(shape)}, expected "
                    f"{self._expected[tensor.name]}"
                )
            if self.batching:
                rows = shape[0]
                if rows > self.max_batch_size:
                    raise InvalidInput(
                        f"input {quoted(tensor.name)} has batch size {rows}, over the model's "
                        f"max_batch_size {self.max_batch_size}"
                    )
                if batch == -1:
                    batch = rows
                elif rows != batch:
                    raise InvalidInput(
                        f"inputs disagree on the batch size: {quoted(tensor.name)} has {rows} "
                        f"rows, an earlier input has {batch}"
                    )
            data = tensor.data
            count = 1
            for d in shape:
                count *= d
            if spec.datatype == "BYTES" and tensor.from_raw:
                data = decode_bytes(data, tensor.name, count, shape)
            elif data.size != count:
                if tensor.from_raw:
                    item = DTYPE_BY_DATATYPE[spec.datatype].itemsize
                    raise InvalidInput(
                        f"input {quoted(tensor.name)} with shape {list(shape)} needs "
                        f"{count * item} bytes of {spec.datatype} raw content, "
                        f"got {data.size * item}"
                    )
                raise InvalidInput(
                    f"input {quoted(tensor.name)} with shape {list(shape)} needs {count} elements, "
                    f"got {data.size}"
                )
            feeds[tensor.name] = data.reshape(shape)
        missing = self.required.difference(feeds)
        if missing:
            if missing <= self.graph_required:
                raise InvalidInput(
                    f"model '{self.model}' needs input(s) {sorted(missing)}: config.pbtxt marks "
                    "them optional, but the ONNX graph has no default for them; send them "
                    "(or give the graph an initializer for them)"
                )
            raise InvalidInput(
                f"model '{self.model}' needs input(s) {sorted(missing)}; got {sorted(feeds)}"
            )
        return feeds, (batch if self.batching else 1)

    def check_outputs(self, requested: Sequence[RequestedOutput]) -> None:
        seen: set[str] = set()
        for out in requested:
            # A repeat is checked first: its earlier occurrence already passed
            # the name check, so the first error found is the same either way.
            if out.name in seen:
                raise InvalidInput(f"output {quoted(out.name)} is requested more than once")
            seen.add(out.name)
            if out.name not in self.outputs:
                raise InvalidInput(
                    f"model '{self.model}' has no output {quoted(out.name)}; "
                    f"its outputs are {list(self.output_names)}"
                )
            if out.class_count < 0:
                raise InvalidInput(
                    f"output {quoted(out.name)}: classification needs class_count >= 1, "
                    f"got {out.class_count}"
                )
