"""The fuzz generators and answer checks for ModelInfer, shared by
``tests/integration/test_fuzz.py`` (a short run in ``make test``) and
``scripts/fuzz.py`` (a long one): Hypothesis strategies for random requests,
valid ones with what they asked, and near misses; the repository they aim at;
and the checks that every answer keeps to the contract."""

from __future__ import annotations

import math
import struct
import subprocess
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import strategies as st

from devtools.onnx_models import config_text, mlp, write_model
from serving._generated import grpc_service_pb2 as pb
from serving._generated import grpc_service_pb2_grpc as pb_grpc

MLP_CLASSES = 3
MLP_MAX_BATCH = 8
LABELS = ("cat", "dog", "emu")

#: Status codes the contract gives to a client's mistake.
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INFER = "/inference.GRPCInferenceService/ModelInfer"


class Server(Protocol):
    """What the checks need of a running server (devtools.serverproc.ServerProcess)."""

    proc: subprocess.Popen[str] | None

    def log(self) -> str: ...


# --- the repository -----------------------------------------------------------


def build_repo(repo: Path) -> Path:
    write_model(
        repo, "mlp", model=mlp(classes=MLP_CLASSES, seed=11), labels=LABELS,
        max_batch_size=MLP_MAX_BATCH,
    )  # fmt: skip
    fixed = config_text("fixed", max_batch_size=0, dynamic_batching=False).replace(
        "dims: [ 2 ]", "dims: [ 3, 2 ]"
    )
    write_model(repo, "fixed", model=mlp(seed=12, batch=3), config=fixed)
    broken = write_model(repo, "broken", model=mlp(seed=13))
    (broken / "1" / "model.onnx").write_bytes(b"\x08\x01garbage, not a model")
    return repo


# --- generators ---------------------------------------------------------------

DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
)  # fmt: skip
ITEMSIZE = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
    "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2, "BYTES": 1,
}  # fmt: skip
#: The KServe V2 typed-contents field of each datatype (FP16/BF16 have none).
FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
FIELDS = sorted(set(FIELD.values()))
FIELD_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}

names = st.one_of(
    st.sampled_from(["mlp"] * 6 + ["fixed"] * 3 + ["broken", "nope", "", "MLP", " mlp"]),
    st.sampled_from(
        [
            "../mlp",
            "/etc/passwd",
            "mlp\0",
            "mlp/../mlp",
            ".",
            "..",
            "x" * 300,
            "mlp/1",
            "\\mlp",
            "~",
            "%2e%2e",
        ]
    ),  # fmt: skip
    st.text(max_size=12),
)
versions = st.one_of(
    st.sampled_from(["", "", "", "1", "1", "2", "0", "-1", "01", "\uff11", "+1", "1.0"]),
    st.sampled_from(["../1", "1/..", "9" * 30, "1\0", "/1", " 1"]),
    st.text(max_size=4),
)
dims = st.one_of(
    st.integers(1, 4),
    st.integers(-3, 12),
    st.sampled_from([-(2**63), -(2**31), 2**31, 2**32 + 2, 2**62, 2**63 - 1]),
)
shapes = st.one_of(
    st.lists(st.integers(1, 4), min_size=1, max_size=3),
    st.lists(dims, max_size=5),
    st.sampled_from([[1, 2], [2, 2], [3, 2], [MLP_MAX_BATCH + 1, 2], [0, 2], [1, 0], [-1, 2]]),
)
parameter_values = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(2**63, 2**64 - 1),
    st.text(max_size=8),
    st.floats(),
)
parameters = st.dictionaries(
    st.one_of(st.sampled_from(["classification", "priority", "timeout", "binary_data"]),
              st.text(max_size=8)),
    parameter_values, max_size=3,
)  # fmt: skip


def set_parameter(target: Any, key: str, value: Any) -> None:
    param = target[key]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int) and value >= 2**63:
        param.uint64_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


@st.composite
def tensors(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """One input tensor's fields, and a raw buffer for it."""
    name = draw(st.one_of(st.sampled_from(["input"] * 6 + ["INPUT", "x", ""]), st.text(max_size=6)))
    datatype = draw(
        st.one_of(
            st.sampled_from(["FP32"] * 8 + list(DATATYPES)),
            st.sampled_from(["", "FP8", "fp32", "STRING", "TYPE_FP32", "FP32\0"]),
        )
    )
    shape = draw(shapes)
    count = math.prod(shape) if shape and all(d > 0 for d in shape) else None
    if count is not None and count > 64:
        count = None
    n = draw(st.sampled_from([count] * 4 + [0, 1, (count or 0) + 1, max((count or 1) - 1, 0)]))
    n = draw(st.integers(0, 8)) if n is None else n
    field = FIELD.get(datatype)
    if field is None or draw(st.integers(0, 9)) == 0:
        field = draw(st.sampled_from(FIELDS))
    values = draw(st.lists(FIELD_VALUES[field], min_size=n, max_size=n))
    if datatype == "BYTES" and draw(st.booleans()):
        items = draw(st.lists(st.binary(max_size=4), min_size=n, max_size=n))
        raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
    else:
        size = n * ITEMSIZE.get(datatype, 4)
        size = draw(st.sampled_from([size, size, size + 1, max(size - 1, 0), 0]))
        raw = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).bytes(size)
    fields = {"name": name, "datatype": datatype, "shape": shape, "field": field,
              "values": values, "parameters": draw(parameters)}  # fmt: skip
    return fields, raw


@st.composite
def requested_outputs(draw: st.DrawFn) -> list[tuple[str, Any]]:
    outs = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.sampled_from(["logits", "probabilities", "nope", ""]),
                              st.text(max_size=6)))  # fmt: skip
        count = draw(
            st.one_of(
                st.none(),
                st.integers(-2, 5),
                st.sampled_from([2**40, 2**63 - 1, -(2**63)]),
                parameter_values,
            )
        )
        outs.append((name, count))
    return outs


@st.composite
def random_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(names), model_version=draw(versions), id=draw(st.text(max_size=8))
    )
    drawn = draw(st.lists(tensors(), max_size=3))
    mode = draw(st.sampled_from(["typed", "typed", "raw", "raw", "raw+1", "raw-1", "both", "none"]))
    for fields, raw in drawn:
        tensor = request.inputs.add(
            name=fields["name"], datatype=fields["datatype"], shape=fields["shape"]
        )
        for key, value in fields["parameters"].items():
            set_parameter(tensor.parameters, key, value)
        if mode in ("typed", "both"):
            getattr(tensor.contents, fields["field"]).extend(fields["values"])
        if mode in ("raw", "raw+1", "raw-1", "both"):
            request.raw_input_contents.append(raw)
    if mode == "raw+1":
        request.raw_input_contents.append(b"\0\0\0\0")
    if mode == "raw-1" and request.raw_input_contents:
        del request.raw_input_contents[-1]
    for name, count in draw(requested_outputs()):
        out = request.outputs.add(name=name)
        if count is not None:
            set_parameter(out.parameters, "classification", count)
    for key, value in draw(parameters).items():
        set_parameter(request.parameters, key, value)
    return request


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[pb.ModelInferRequest, np.ndarray, list[Any]]:
    """A request the server must answer correctly: the input and what was asked."""
    model = draw(st.sampled_from(["mlp", "mlp", "fixed"]))
    rows = 3 if model == "fixed" else draw(st.integers(1, MLP_MAX_BATCH))
    x = np.array(
        draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=rows * 2, max_size=rows * 2)),
        dtype=np.float32,
    ).reshape(rows, 2)
    request = pb.ModelInferRequest(
        model_name=model,
        model_version=draw(st.sampled_from(["", "1"])),
        id=draw(st.text(max_size=8)),
    )
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[rows, 2])
    if draw(st.booleans()):
        request.raw_input_contents.append(x.tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    asked: list[Any] = []
    outputs = draw(
        st.sampled_from([[], ["logits"], ["probabilities"], ["probabilities", "logits"]])
    )
    for name in outputs:
        out = request.outputs.add(name=name)
        k = draw(st.sampled_from([0, 0, 1, 2, MLP_CLASSES, 10])) if model == "mlp" else 0
        if k:
            out.parameters["classification"].int64_param = k
        asked.append((name, k))
    return request, x, asked


@st.composite
def near_misses(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A valid request with one thing changed: reaches the deeper checks."""
    request, _, _ = draw(valid_requests())
    tensor = request.inputs[0]
    kind = draw(
        st.sampled_from(
            ["datatype", "shape", "dim", "bytes", "name", "version", "model", "extra input",
             "output", "classification", "parameters", "raw and typed", "no data", "harmless"]
        )
    )  # fmt: skip
    if kind == "datatype":
        tensor.datatype = draw(st.sampled_from([d for d in DATATYPES if d != "FP32"]))
    elif kind == "shape":
        tensor.ClearField("shape")
        tensor.shape.extend(draw(shapes))
    elif kind == "dim":
        tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(dims)
    elif kind == "bytes":
        if request.raw_input_contents:
            raw = request.raw_input_contents[0]
            cut = draw(st.integers(-5, 5).filter(lambda n: n != 0))
            request.raw_input_contents[0] = raw[:cut] if cut < 0 else raw + b"\0" * cut
        else:
            tensor.contents.fp32_contents.append(draw(st.floats(width=32)))
    elif kind == "name":
        tensor.name = draw(st.sampled_from(["INPUT", "", "input ", "logits"]))
    elif kind == "version":
        request.model_version = draw(versions)
    elif kind == "model":
        request.model_name = draw(st.one_of(st.sampled_from(["broken", "nope"]), names))
    elif kind == "extra input":
        request.inputs.append(tensor)
        if request.raw_input_contents:
            request.raw_input_contents.append(request.raw_input_contents[0])
    elif kind == "output":
        request.outputs.add(name=draw(st.sampled_from(["logits", "nope", "input", ""])))
    elif kind == "classification":
        out = request.outputs.add(name=draw(st.sampled_from(["logits", "probabilities"])))
        set_parameter(out.parameters, "classification", draw(parameter_values))
    elif kind == "parameters":
        for key, value in draw(parameters).items():
            set_parameter(request.parameters, key, value)
    elif kind == "raw and typed":
        tensor.contents.fp32_contents.append(1.0)
        request.raw_input_contents.append(b"\0" * 4)
    elif kind == "no data":
        tensor.ClearField("contents")
        request.ClearField("raw_input_contents")
    return request


def for_broken_model(
    drawn: tuple[pb.ModelInferRequest, np.ndarray, list[Any]],
) -> pb.ModelInferRequest:
    """A request fine in every way, to the model that failed to load."""
    request = drawn[0]
    request.model_name = "broken"
    return request


# --- checking answers ---------------------------------------------------------


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray | list[bytes]]:
    result: dict[str, np.ndarray | list[bytes]] = {}
    assert len(response.raw_output_contents) == len(response.outputs)
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if out.datatype == "BYTES":
            items, offset = [], 0
            while offset < len(raw):
                (n,) = struct.unpack_from("<I", raw, offset)
                items.append(raw[offset + 4 : offset + 4 + n])
                offset += 4 + n
            result[out.name] = items
        else:
            assert out.datatype == "FP32", out
            result[out.name] = np.frombuffer(raw, dtype=np.float32).reshape(list(out.shape))
    return result


def check_valid(
    response: pb.ModelInferResponse,
    request: pb.ModelInferRequest,
    x: np.ndarray,
    asked: list[Any],
    sessions: dict[str, ort.InferenceSession],
) -> None:
    session = sessions[request.model_name]
    logits, probabilities = session.run(["logits", "probabilities"], {"input": x})
    expected = {"logits": logits, "probabilities": probabilities}
    got = outputs_of(response)
    assert response.model_name == request.model_name
    assert response.model_version == "1"
    assert response.id == request.id
    wanted = [name for name, _ in asked] or ["logits", "probabilities"]
    assert [o.name for o in response.outputs] == wanted
    for name, k in asked or [(n, 0) for n in wanted]:
        if not k:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
            continue
        k = min(k, MLP_CLASSES)
        assert list(response.outputs[wanted.index(name)].shape) == [len(x), k]
        items = got[name]
        assert isinstance(items, list) and len(items) == len(x) * k
        for r in range(len(x)):
            row = expected[name][r]
            for j, item in enumerate(items[r * k : (r + 1) * k]):
                # "score:index:label" (label only on an output with a label file)
                score, index, *label = item.decode().split(":")
                # The server's top-k must be a top-k of onnxruntime's own row.
                assert row[int(index)] == pytest.approx(float(score), rel=1e-4, abs=1e-5)
                assert np.sum(row > row[int(index)] + 1e-5) <= j, (row, item)
                assert label == ([LABELS[int(index)]] if name == "probabilities" else [])


def assert_client_status(request: Any, error: grpc.RpcError) -> None:
    code = error.code()
    assert code in CLIENT_CODES, (
        f"{code} ({error.details()}) for a client mistake; request: {str(request)[:600]}"
    )
    if code == grpc.StatusCode.UNAVAILABLE:
        # Only the broken model is unavailable; the good ones never are.
        assert getattr(request, "model_name", "broken") not in ("mlp", "fixed"), error.details()


# --- after a run --------------------------------------------------------------


def valid_request_bytes() -> bytes:
    request = pb.ModelInferRequest(model_name="mlp", id="garbage-base")
    request.inputs.add(name="input", datatype="FP32", shape=[2, 2])
    request.raw_input_contents.append(np.arange(4, dtype=np.float32).tobytes())
    return request.SerializeToString()


def assert_alive_and_correct(
    server: Server, channel: grpc.Channel, sessions: dict[str, ort.InferenceSession]
) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    x = np.linspace(-3, 3, MLP_MAX_BATCH * 2, dtype=np.float32).reshape(MLP_MAX_BATCH, 2)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    check_valid(stub.ModelInfer(request, timeout=30), request, x, [], sessions)
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
