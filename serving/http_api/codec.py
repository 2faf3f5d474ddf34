"""JSON (and Triton's binary tensor data extension) <-> ``serving.tensors``:
the only module of the REST edge that touches tensor bytes.

A request body is a JSON header, optionally followed by raw tensor bytes
(``Inference-Header-Content-Length`` gives the header's length; each input
that travels raw says how many bytes are its own in
``parameters.binary_data_size``, in input order). Raw inputs become numpy
views of the body (``np.frombuffer`` on a memoryview slice: no copy); raw
BYTES stay undecoded (uint8) until validation, as on gRPC. JSON ``data`` is
nested or flat, row-major, and typed per datatype: numbers for numeric
types, ``true``/``false`` for BOOL, strings for BYTES; FP16 and BF16 only
travel raw, as in Triton.

An answer is all JSON, unless an output is asked for raw
(``parameters.binary_data`` on a requested output, or the request's
``binary_data_output`` for outputs not listed): then the JSON header gives
each raw output's ``binary_data_size`` and the raw bytes follow it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serving import shm as shared
from serving.datatypes import DTYPE_BY_DATATYPE
from serving.errors import InvalidInput
from serving.grpc_api.codec import encode_bytes
from serving.tensors import InferRequest, InferResponse, RequestedOutput, Tensor
from serving.validation import quoted, raw_tensor

_MAX_RANK = 32
_MAX_DEPTH = 33
_FLOAT_TYPES = frozenset({"FP32", "FP64"})
_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_RAW_ONLY = frozenset({"FP16", "BF16"})
_NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY


class Decoded:
    """An InferRequest and how its answer is to be encoded."""

    __slots__ = ("request", "binary", "binary_default", "shm")

    def __init__(
        self,
        request: InferRequest,
        binary: dict[str, bool],
        binary_default: bool,
        shm: shared.ShmRequest | None = None,
    ):
        self.request = request
        #: the shared-memory regions of its inputs and outputs
        self.shm = shm
        #: output name -> raw (True) or JSON (False), for the outputs listed
        self.binary = binary
        #: for the outputs not listed
        self.binary_default = binary_default


def json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)  # fmt: skip


def _typed(value: Any, what: str, cls: type, expected: str, default: Any) -> Any:
    """``value`` if it is a ``cls``, ``default`` if absent, else a clear error."""
    if value is None:
        return default
    if not isinstance(value, cls):
        raise InvalidInput(f"{what} must be {expected}, got {_kind(value)}")
    return value


def _named(item: Any, where: str, i: int) -> tuple[dict[str, Any], str]:
    """Entry ``i`` of the ``where`` array as an object, and its non-empty name."""
    obj = item if type(item) is dict else json_object(item, f"{where}[{i}]")
    name = obj.get("name")
    if type(name) is not str:
        name = _string(name, f"{where}[{i}].name")
    if not name:
        raise InvalidInput(f"{where}[{i}] needs a 'name'")
    return obj, name


def _string(value: Any, what: str, default: str = "") -> str:
    return str(_typed(value, what, str, "a string", default))


def flag(value: Any, what: str) -> bool:
    return bool(_typed(value, what, bool, "true or false", False))


def _size(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInput(f"{what} must be a whole number >= 0, got {value!r:.40}")
    return value


def parse_header(data: bytes | memoryview) -> dict[str, Any]:
    try:
        header = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"the request body is not valid JSON ({exc.msg} at position {exc.pos}); "
            "send a KServe V2 inference request object"
        ) from None
    return json_object(header, "the request body")


def decode_request(
    header: dict[str, Any],
    binary: memoryview,
    model: str,
    version: str,
    shm: shared.ShmRequest | None = None,
) -> Decoded:
    """``header``: the parsed JSON; ``binary``: the bytes after it (may be
    empty); ``shm``: where shared-memory inputs and outputs are taken from."""
    request_id = _string(header.get("id"), "'id'")
    params = header.get("parameters")
    parameters: dict[str, Any] = {}
    if params is not None:
        parameters = dict(json_object(params, "'parameters'"))
    binary_default = flag(parameters.pop("binary_data_output", None), "binary_data_output")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput(
            "the request needs 'inputs': an array of {name, shape, datatype, data} objects"
        )
    tensors = []
    offset = 0
    total = len(binary)
    # Each check below tests the type first and builds its error message only
    # when it fails: an f-string per field was a measurable part of a request.
    for i, item in enumerate(raw_inputs):
        inp, name = _named(item, "inputs", i)
        datatype = inp.get("datatype")
        if type(datatype) is not str:
            datatype = _string(datatype, f"input {quoted(name)} datatype")
        dtype = DTYPE_BY_DATATYPE.get(datatype)
        if dtype is None:
            raise InvalidInput(
                f"input {quoted(name)} has unknown datatype {quoted(datatype)}; "
                f"use one of {sorted(DTYPE_BY_DATATYPE)}"
            )
        shape_value = inp.get("shape")
        if not isinstance(shape_value, list) or not all(type(d) is int for d in shape_value):
            raise InvalidInput(f"input {quoted(name)} needs 'shape': an array of integers")
        if len(shape_value) > _MAX_RANK:
            raise InvalidInput(
                f"input {quoted(name)} has rank {len(shape_value)}, over {_MAX_RANK}"
            )
        shape = tuple(shape_value)
        in_params = inp.get("parameters")
        size = None
        if in_params is not None:
            if type(in_params) is not dict:
                in_params = json_object(in_params, f"input {quoted(name)} parameters")
            if "binary_data_size" in in_params:
                size = in_params["binary_data_size"]
                if type(size) is not int or size < 0:
                    size = _size(size, f"input {quoted(name)} binary_data_size")
            where = shared.parameters(in_params, "input", name)
            if where is not None:
                if size is not None or "data" in inp:
                    raise InvalidInput(
                        f"input {quoted(name)} is in shared memory and has data or "
                        "binary_data_size too; send one of them"
                    )
                tensors.append(_in_shm(shm).input(name, datatype, shape, where))
                continue
        if size is not None:
            if "data" in inp:
                raise InvalidInput(
                    f"input {quoted(name)} has both 'data' and binary_data_size; "
                    "send one or the other"
                )
            if offset + size > total:
                raise InvalidInput(
                    f"input {quoted(name)}: binary_data_size {size} runs past the "
                    f"{total} bytes of binary data after the JSON header"
                )
            tensors.append(
                raw_tensor(name, datatype, shape, binary[offset : offset + size], "binary data")
            )
            offset += size
            continue
        if "data" not in inp:
            raise InvalidInput(
                f"input {quoted(name)} carries no data: set 'data' (JSON) or "
                "parameters.binary_data_size (binary tensor data extension)"
            )
        tensors.append(Tensor(name, datatype, shape, _json_data(inp["data"], name, datatype)))
    if offset != total:
        raise InvalidInput(
            f"the inputs' binary_data_size add up to {offset} bytes, but {total} bytes "
            "follow the JSON header (Inference-Header-Content-Length)"
        )
    outputs, listed = _outputs(header.get("outputs"), binary_default, shm)
    request = InferRequest(model, version, tuple(tensors), outputs, request_id, parameters)
    return Decoded(request, listed, binary_default, shm)


def _in_shm(shm: shared.ShmRequest | None) -> shared.ShmRequest:
    if shm is None:
        raise InvalidInput("shared-memory tensors are not supported on this call")
    return shm


def _outputs(
    value: Any, binary_default: bool, shm: shared.ShmRequest | None
) -> tuple[tuple[RequestedOutput, ...], dict[str, bool]]:
    if value is None:
        return (), {}
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be an array of {name, parameters} objects")
    requested = []
    listed: dict[str, bool] = {}
    for i, item in enumerate(value):
        out, name = _named(item, "outputs", i)
        params = out.get("parameters")
        count = 0
        raw = binary_default
        if params is not None:
            if type(params) is not dict:
                params = json_object(params, f"output {quoted(name)} parameters")
            binary = params.get("binary_data")
            if binary is not None:
                raw = binary
                if type(binary) is not bool:
                    raw = flag(binary, f"output {quoted(name)} binary_data")
            if params.get("classification") is not None:
                count = params["classification"]
                if type(count) is not int:
                    raise InvalidInput(
                        f"output {quoted(name)}: the classification parameter must be an integer"
                    )
                if count < 1:
                    raise InvalidInput(
                        f"output {quoted(name)}: classification needs class_count >= 1, got {count}"
                    )
            where = shared.parameters(params, "output", name)
            if where is not None:
                _in_shm(shm).output(name, where)
        requested.append(RequestedOutput(name, count))
        listed[name] = raw
    return tuple(requested), listed


def _flatten(data: Any, name: str) -> list[Any]:
    """Nested JSON arrays as one row-major list (the shape is checked later
    against the element count)."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    _extend(flat, data, name, 0)
    return flat


def _extend(flat: list[Any], items: list[Any], name: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidInput(f"input {quoted(name)}: 'data' is nested deeper than {_MAX_DEPTH}")
    for item in items:
        if isinstance(item, list):
            _extend(flat, item, name, depth + 1)
        else:
            flat.append(item)


def _json_data(data: Any, name: str, datatype: str) -> np.ndarray:
    if datatype in _RAW_ONLY:
        raise InvalidInput(
            f"input {quoted(name)} is {datatype}, which JSON cannot carry; send it with the "
            "binary tensor data extension (parameters.binary_data_size)"
        )
    flat = _flatten(data, name)
    dtype = DTYPE_BY_DATATYPE[datatype]
    if datatype == "BYTES":
        if not all(type(x) is str for x in flat):
            raise InvalidInput(f"input {quoted(name)} is BYTES: its 'data' must be strings")
        array = np.empty(len(flat), dtype=np.object_)
        array[:] = [x.encode() for x in flat]
        return array
    if datatype == "BOOL":
        if not all(type(x) is bool for x in flat):
            raise InvalidInput(f"input {quoted(name)} is BOOL: its 'data' must be true/false")
        return np.array(flat, dtype=np.bool_)
    if datatype in _FLOAT_TYPES:
        if not all(type(x) is float or type(x) is int for x in flat):
            raise InvalidInput(f"input {quoted(name)} is {datatype}: its 'data' must be numbers")
        try:
            return np.array(flat, dtype=dtype)
        except OverflowError:
            raise InvalidInput(
                f"input {quoted(name)}: a value is out of {datatype}'s range"
            ) from None
    assert datatype in _INT_TYPES
    if not all(type(x) is int for x in flat):
        raise InvalidInput(f"input {quoted(name)} is {datatype}: its 'data' must be integers")
    info = np.iinfo(dtype)
    if flat:
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                f"input {quoted(name)}: {datatype} values must be in {info.min}..{info.max}, "
                f"got {str(bad)[:40]}"
            )
    return np.array(flat, dtype=dtype)


def encode_response(response: InferResponse, decoded: Decoded) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when raw outputs follow it
    (None: the body is all JSON)."""
    outputs = []
    chunks: list[bytes] = []
    listed = decoded.binary
    default = decoded.binary_default
    shm = decoded.shm
    for t in response.outputs:
        raw = listed.get(t.name, default)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if shm is not None and shm.outputs and t.name in shm.outputs:
            params = shm.write(t, encode_bytes(t.data) if t.datatype == "BYTES" else None)
            entry["parameters"] = params
        elif raw:
            data = encode_bytes(t.data) if t.datatype == "BYTES" else t.data.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif t.datatype == "BYTES":
            entry["data"] = [_text(x) for x in t.data.reshape(-1)]
        else:
            entry["data"] = np.ascontiguousarray(t.data).reshape(-1)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        body["id"] = response.id
    body["outputs"] = outputs
    head = orjson.dumps(body, option=_NUMPY_JSON, default=_tolist)
    if not chunks:
        return head, None
    return b"".join((head, *chunks)), len(head)


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    return str(item)


def _tolist(value: Any) -> Any:
    """orjson's fallback for numpy types it does not serialize (float16)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError
