"""grpc_api.codec: protobuf <-> serving.tensors, without a server.

Round trips through raw and typed contents for every datatype, BYTES in
Triton's 4-byte length-prefixed form (checked against tritonclient's own
serialiser), and the malformed requests the codec must refuse.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as triton_pb
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from serving._generated import grpc_service_pb2 as pb
from serving.datatypes import DTYPE_BY_DATATYPE
from serving.errors import InvalidInput
from serving.grpc_api import codec
from serving.tensors import InferResponse, RequestedOutput, Tensor
from serving.validation import decode_bytes

NUMERIC = sorted(k for k in DTYPE_BY_DATATYPE if k not in ("BYTES",))
TYPED = sorted(codec.CONTENTS_FIELD)


def sample(datatype: str, n: int = 6) -> np.ndarray:
    if datatype == "BYTES":
        values = [b"", b"a", "é".encode(), b"\x00\xff", b"x" * 300, b"last"][:n]
        array = np.empty(len(values), dtype=np.object_)
        array[:] = values
        return array
    dtype = DTYPE_BY_DATATYPE[datatype]
    if datatype == "BOOL":
        return np.array([True, False] * (n // 2), dtype=dtype)
    if dtype.kind == "f":
        return np.array([0.0, -1.5, 3.25, 1e-3, -7.0, 2.0][:n], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([info.min, info.max, 0, 1, 2, 3][:n], dtype=dtype)


def triton_bytes(array: np.ndarray) -> bytes:
    """tritonclient's own BYTES encoding (a 0-d object array holding bytes)."""
    return bytes(serialize_byte_tensor(array).item())


def request(datatype: str, shape: list[int], **kwargs: object) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", model_version="1", id="r1", **kwargs)  # type: ignore[arg-type]
    msg.inputs.add(name="input", datatype=datatype, shape=shape)
    return msg


# --- inputs: round trips -----------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_input_round_trip(datatype: str) -> None:
    array = sample(datatype)
    msg = request(datatype, [2, 3])
    msg.raw_input_contents.append(array.tobytes())
    decoded = codec.decode_request(msg)
    (tensor,) = decoded.inputs
    assert (tensor.name, tensor.datatype, tensor.shape, tensor.from_raw) == (
        "input", datatype, (2, 3), True,
    )  # fmt: skip
    assert tensor.data.dtype == DTYPE_BY_DATATYPE[datatype]
    np.testing.assert_array_equal(tensor.data, array)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "1", "r1")


def test_raw_input_is_not_copied() -> None:
    payload = np.arange(4, dtype=np.float32).tobytes()
    msg = request("FP32", [2, 2])
    msg.raw_input_contents.append(payload)
    (tensor,) = codec.decode_request(msg).inputs
    assert not tensor.data.flags.owndata  # a view on the message's bytes


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_input_round_trip(datatype: str) -> None:
    array = sample(datatype)
    msg = request(datatype, [6])
    getattr(msg.inputs[0].contents, codec.CONTENTS_FIELD[datatype]).extend(array.tolist())
    (tensor,) = codec.decode_request(msg).inputs
    assert (tensor.datatype, tensor.shape, tensor.from_raw) == (datatype, (6,), False)
    assert tensor.data.dtype == DTYPE_BY_DATATYPE[datatype]
    assert tensor.data.tolist() == array.tolist()


def test_raw_bytes_input_is_handed_over_undecoded() -> None:
    """Raw BYTES stay the wire's bytes (uint8, no copy) until validation has
    checked the model takes BYTES; validation then decodes them."""
    array = sample("BYTES")
    wire = triton_bytes(array)  # tritonclient's encoding
    msg = request("BYTES", [6])
    msg.raw_input_contents.append(wire)
    (tensor,) = codec.decode_request(msg).inputs
    assert (tensor.datatype, tensor.from_raw, tensor.data.dtype) == ("BYTES", True, np.uint8)
    assert tensor.data.tobytes() == wire
    assert decode_bytes(tensor.data, "input", 6).tolist() == array.tolist()


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_bytes_encoding_round_trips_and_matches_tritonclient(values: list[bytes]) -> None:
    array = np.empty(len(values), dtype=np.object_)
    array[:] = values
    encoded = codec.encode_bytes(array)
    if values:
        assert encoded == triton_bytes(array)
        assert deserialize_bytes_tensor(encoded).tolist() == values
    assert decode_bytes(encoded, "x").tolist() == values


def test_tritonclient_request_bytes_decode() -> None:
    """What tritonclient puts on the wire parses into our messages and decodes."""
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    tensor = triton.InferInput("input", [3, 2], "FP32")
    tensor.set_data_from_numpy(x)
    wire = triton_pb.ModelInferRequest(
        model_name="m", id="abc", inputs=[tensor._get_tensor()],
        raw_input_contents=[tensor._get_content()],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=2)._get_tensor()],
    ).SerializeToString()  # fmt: skip
    decoded = codec.decode_request(pb.ModelInferRequest.FromString(wire))
    assert decoded.id == "abc"
    np.testing.assert_array_equal(decoded.inputs[0].data.reshape(3, 2), x)
    assert decoded.outputs == (RequestedOutput("probabilities", 2),)


@pytest.mark.parametrize(
    ("datatype", "field", "value"),
    [("UINT8", "uint_contents", 256), ("UINT16", "uint_contents", 70000),
     ("INT8", "int_contents", 128), ("INT8", "int_contents", -129),
     ("INT16", "int_contents", -40000)],
)  # fmt: skip
def test_typed_values_out_of_range_are_refused(datatype: str, field: str, value: int) -> None:
    """int_contents/uint_contents carry 32-bit values; a narrower datatype
    must not wrap them silently (300 as UINT8 is not 44)."""
    msg = _typed(datatype, field, [1, value])
    with pytest.raises(InvalidInput) as info:
        codec.decode_request(msg)
    assert f"input 'input': {datatype} values must be in" in info.value.message
    assert str(value) in info.value.message


@pytest.mark.parametrize("datatype", ["UINT8", "UINT16", "INT8", "INT16"])
def test_typed_values_at_the_limits_are_kept(datatype: str) -> None:
    info = np.iinfo(DTYPE_BY_DATATYPE[datatype])
    msg = _typed(datatype, codec.CONTENTS_FIELD[datatype], [int(info.min), int(info.max)])
    (tensor,) = codec.decode_request(msg).inputs
    assert tensor.data.tolist() == [info.min, info.max]


# --- inputs: refused -----------------------------------------------------------------


def _both() -> pb.ModelInferRequest:
    msg = request("FP32", [1, 2])
    msg.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    msg.raw_input_contents.append(np.zeros(2, np.float32).tobytes())
    return msg


def _typed(datatype: str, field: str, values: list[object]) -> pb.ModelInferRequest:
    msg = request(datatype, [len(values)])
    getattr(msg.inputs[0].contents, field).extend(values)
    return msg


def _two_fields() -> pb.ModelInferRequest:
    msg = _typed("INT32", "int_contents", [1])
    msg.inputs[0].contents.fp32_contents.append(1.0)
    return msg


def _raw(datatype: str, payload: bytes, extra_raw: int = 0) -> pb.ModelInferRequest:
    msg = request(datatype, [1])
    msg.raw_input_contents.extend([payload] * (1 + extra_raw))
    return msg


REFUSED = {
    "raw and typed": (_both(), "input 'input' has both typed contents and raw_input_contents"),
    "wrong contents field": (
        _typed("FP32", "int_contents", [1, 2]),
        "input 'input' is FP32 but its data is in contents.int_contents; "
        "use contents.fp32_contents",
    ),
    "two contents fields": (_two_fields(), "is INT32 but its data is in contents.fp32_contents"),
    "no data": (request("FP32", [1, 2]), "input 'input' carries no data"),
    "unknown datatype": (_raw("FLOAT32", b"\0" * 4), "unknown datatype 'FLOAT32'"),
    "fp16 typed": (_typed("FP16", "fp32_contents", [1.0]), "FP16 can only be sent as raw"),
    "raw not whole elements": (_raw("FP32", b"\0" * 7), "7 bytes of raw content"),
    "raw count mismatch": (
        _raw("FP32", b"\0" * 4, extra_raw=1), "raw_input_contents has 2 entries for 1 inputs",
    ),
    "rank over 32": (
        pb.ModelInferRequest(
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                          shape=[1] * 33)]
        ),
        "rank 33",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused(case: str) -> None:
    msg, fragment = REFUSED[case]
    with pytest.raises(InvalidInput) as info:
        codec.decode_request(msg)
    assert fragment in info.value.message, info.value.message


# --- requested outputs and parameters -------------------------------------------------


def _output(**params: object) -> pb.ModelInferRequest:
    msg = _raw("FP32", b"\0" * 4)
    out = msg.outputs.add(name="probabilities")
    for kind, value in params.items():
        setattr(out.parameters["classification"], kind, value)
    return msg


@pytest.mark.parametrize(
    ("params", "count"),
    [({}, 0), ({"int64_param": 3}, 3), ({"uint64_param": 2}, 2)],
)
def test_classification_parameter(params: dict[str, object], count: int) -> None:
    assert codec.decode_request(_output(**params)).outputs == (
        RequestedOutput("probabilities", count),
    )


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"string_param": "3"}, "must be an integer"),
        ({"bool_param": True}, "must be an integer"),
        ({"double_param": 2.0}, "must be an integer"),
        ({"int64_param": 0}, "class_count >= 1, got 0"),
        ({"int64_param": -4}, "class_count >= 1, got -4"),
    ],
)
def test_classification_parameter_refused(params: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        codec.decode_request(_output(**params))
    assert "output 'probabilities'" in info.value.message
    assert fragment in info.value.message


def test_request_parameters_are_decoded() -> None:
    msg = _raw("FP32", b"\0" * 4)
    msg.parameters["timeout"].int64_param = 5000
    msg.parameters["tag"].string_param = "x"
    assert codec.decode_request(msg).parameters == {"timeout": 5000, "tag": "x"}


# --- responses ---------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
def test_response_round_trip(datatype: str) -> None:
    array = sample(datatype).reshape(2, 3)
    response = InferResponse(
        "m", "2", (Tensor("out", datatype, (2, 3), array), Tensor("b", "FP32", (1,),
                   np.ones(1, np.float32))), "id-9",
    )  # fmt: skip
    msg = codec.encode_response(response)
    wire = triton_pb.ModelInferResponse.FromString(msg.SerializeToString())
    result = triton.InferResult(wire)  # decoded by tritonclient, as users do
    assert (wire.model_name, wire.model_version, wire.id) == ("m", "2", "id-9")
    assert [(o.name, o.datatype, list(o.shape)) for o in wire.outputs] == [
        ("out", datatype, [2, 3]), ("b", "FP32", [1]),
    ]  # fmt: skip
    assert len(wire.raw_output_contents) == 2
    if datatype == "BF16":  # tritonclient decodes BF16 to float32; compare the bits
        assert wire.raw_output_contents[0] == array.tobytes()
    else:
        assert result.as_numpy("out").tolist() == array.tolist()
    assert not any(o.HasField("contents") for o in msg.outputs)  # always raw


def test_response_layouts_are_kept_apart_by_name_datatype_and_shape() -> None:
    """Output metadata is reused per (name, datatype, shape): a response that
    differs in any of them must not get another response's metadata."""
    variants = [
        ("out", "FP32", (2, 3)), ("out", "FP32", (3, 2)), ("out", "FP32", (6,)),
        ("other", "FP32", (2, 3)), ("out", "INT32", (2, 3)), ("out", "FP32", (2, 3)),
    ]  # fmt: skip
    for name, datatype, shape in variants * 2:
        array = sample(datatype).reshape(shape)
        response = InferResponse("m", "1", (Tensor(name, datatype, shape, array),))
        msg = codec.encode_response(response)
        wire = triton_pb.ModelInferResponse.FromString(msg.SerializeToString())
        assert [(o.name, o.datatype, list(o.shape)) for o in wire.outputs] == [
            (name, datatype, list(shape))
        ]
        assert wire.raw_output_contents == [array.tobytes()]


def test_response_layouts_past_the_cap_still_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_LAYOUTS", {})
    monkeypatch.setattr(codec, "_MAX_LAYOUTS", 2)
    for rows in range(1, 6):
        array = np.arange(rows, dtype=np.float32)
        msg = codec.encode_response(InferResponse("m", "1", (Tensor("y", "FP32", (rows,), array),)))
        assert list(msg.outputs[0].shape) == [rows]
        assert np.frombuffer(msg.raw_output_contents[0], np.float32).tolist() == array.tolist()
    assert len(codec._LAYOUTS) == 2


@pytest.mark.parametrize("datatype", NUMERIC + ["BYTES"])
@pytest.mark.parametrize(
    ("request_id", "rows"),
    [("", 1), ("id-9", 2), ("é" * 70, 3), ("x" * 20_000, 700)],  # 1-, 2- and 3-byte lengths
)
def test_serialized_response_is_the_messages_bytes(
    datatype: str, request_id: str, rows: int
) -> None:
    """ModelInfer answers with ``serialize_response``'s bytes (no message):
    they must be exactly what protobuf writes for the message, whatever the
    id's and the tensors' lengths."""
    array = np.resize(sample(datatype), rows * 3).reshape(rows, 3)
    response = InferResponse(
        "model", "12", (Tensor("out", datatype, (rows, 3), array),
                        Tensor("b", "FP32", (1,), np.ones(1, np.float32))), request_id,
    )  # fmt: skip
    assert codec.serialize_response(response) == codec.encode_response(response).SerializeToString()


def test_serialized_response_heads_past_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names and versions are kept serialized up to the cap, then built each time."""
    monkeypatch.setattr(codec, "_HEADS", {})
    monkeypatch.setattr(codec, "_MAX_LAYOUTS", 2)
    array = np.arange(4, dtype=np.float32)
    for version in range(1, 6):
        response = InferResponse("m", str(version), (Tensor("y", "FP32", (4,), array),), "r")
        wire = pb.ModelInferResponse.FromString(codec.serialize_response(response))
        assert (wire.model_name, wire.model_version, wire.id) == ("m", str(version), "r")
        assert np.frombuffer(wire.raw_output_contents[0], np.float32).tolist() == array.tolist()
    assert len(codec._HEADS) == 2
