"""The protocol definitions in protos/ and their generated code in serving/_generated.

Checks that the committed code is what scripts/gen_protos.py produces, that
every message, enum and RPC is wire-identical to the definitions tritonclient
2.41 ships, that both sets of generated modules coexist in one process, and
that Triton-style config.pbtxt files parse.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pool, text_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import model_config_pb2 as triton_config_pb2
from tritonclient.grpc import service_pb2 as triton_service_pb2
from tritonclient.utils import InferenceServerException

from serving._generated import POOL, grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "serving" / "_generated"
SERVICE = "inference.GRPCInferenceService"

# Fields and messages that Triton added after tritonclient 2.41 (same names
# and numbers as upstream); ours may have them, tritonclient's do not.
NEWER_FIELDS = {
    "inference.ModelInput.is_non_linear_format_io",
    "inference.ModelOutput.is_non_linear_format_io",
    "inference.ModelEnsembling.max_inflight_responses",
    "inference.ModelConfig.runtime",
    "inference.ModelConfig.model_metrics",
    "inference.ModelStatistics.response_stats",
}
NEWER_MESSAGES = {
    "inference.ModelMetrics",
    "inference.ModelMetrics.MetricControl",
    "inference.ModelMetrics.MetricControl.MetricIdentifier",
    "inference.ModelMetrics.MetricControl.HistogramOptions",
    "inference.InferResponseStatistics",
    "inference.ModelStatistics.ResponseStatsEntry",
}
# Messages of tritonclient's we deliberately leave out (none so far: we
# declare every RPC, including the ones the server answers UNIMPLEMENTED).
OMITTED_MESSAGES: set[str] = set()


# --- helpers ----------------------------------------------------------------


def _messages(desc: _descriptor.FileDescriptor) -> Iterator[Descriptor]:
    def walk(message: Descriptor) -> Iterator[Descriptor]:
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    for message in desc.message_types_by_name.values():
        yield from walk(message)


def _enums(desc: _descriptor.FileDescriptor) -> Iterator[EnumDescriptor]:
    yield from desc.enum_types_by_name.values()
    for message in _messages(desc):
        yield from message.enum_types


def _field_signature(field: FieldDescriptor) -> tuple[object, ...]:
    """Everything about a field that affects the wire and text formats."""
    if field.message_type is not None:
        type_name = field.message_type.full_name
    elif field.enum_type is not None:
        type_name = field.enum_type.full_name
    else:
        type_name = ""
    oneof = field.containing_oneof.name if field.containing_oneof is not None else None
    return (
        field.name,
        field.number,
        field.type,
        field.is_repeated,
        field.has_presence,
        field.is_packed,
        type_name,
        oneof,
    )


def _message_signature(message: Descriptor) -> dict[str, object]:
    return {
        "map_entry": message.GetOptions().map_entry,
        "oneofs": sorted(o.name for o in message.oneofs),
        "enums": sorted(e.full_name for e in message.enum_types),
        # Newer nested types (e.g. map entries of newer map fields) are
        # checked by test_our_extra_messages_are_the_listed_newer_ones.
        "nested": sorted(
            n.full_name for n in message.nested_types if n.full_name not in NEWER_MESSAGES
        ),
    }


TRITON_FILES = {
    "model_config.proto": triton_config_pb2.DESCRIPTOR,
    "grpc_service.proto": triton_service_pb2.DESCRIPTOR,
}
OUR_FILES = {
    "model_config.proto": model_config_pb2.DESCRIPTOR,
    "grpc_service.proto": grpc_service_pb2.DESCRIPTOR,
}
TRITON_MESSAGES = {m.full_name: m for f in TRITON_FILES.values() for m in _messages(f)}
OUR_MESSAGES = {m.full_name: m for f in OUR_FILES.values() for m in _messages(f)}
TRITON_ENUMS = {e.full_name: e for f in TRITON_FILES.values() for e in _enums(f)}
OUR_ENUMS = {e.full_name: e for f in OUR_FILES.values() for e in _enums(f)}


# --- generated code is up to date --------------------------------------------


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    out = tmp_path / "_generated"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    fresh = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    committed = {
        p.name: p.read_bytes()
        for p in GENERATED.iterdir()
        if p.is_file() and p.suffix in (".py", ".pyi")
    }
    assert sorted(fresh) == sorted(committed), "file set differs: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}: run `make protos`"


def test_generator_reports_a_broken_proto_in_one_line(tmp_path: Path) -> None:
    protos = tmp_path / "protos"
    protos.mkdir()
    for name in ("model_config.proto", "grpc_service.proto"):
        (protos / name).write_text((ROOT / "protos" / name).read_text())
    (protos / "model_config.proto").write_text('syntax = "proto3";\nmessage {\n')
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gen_protos.py"),
            "--protos",
            str(protos),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("gen_protos: protoc failed")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


# --- wire compatibility with tritonclient -------------------------------------


def test_files_have_triton_names_and_package() -> None:
    for name, ours in OUR_FILES.items():
        assert ours.name == name
        assert ours.package == TRITON_FILES[name].package == "inference"
        assert ours.pool is POOL
    assert [d.name for d in grpc_service_pb2.DESCRIPTOR.dependencies] == ["model_config.proto"]


def test_every_triton_message_exists_in_ours() -> None:
    missing = set(TRITON_MESSAGES) - set(OUR_MESSAGES) - OMITTED_MESSAGES
    assert not missing


def test_our_extra_messages_are_the_listed_newer_ones() -> None:
    assert set(OUR_MESSAGES) - set(TRITON_MESSAGES) == NEWER_MESSAGES


@pytest.mark.parametrize("full_name", sorted(set(TRITON_MESSAGES) & set(OUR_MESSAGES)))
def test_message_is_wire_identical(full_name: str) -> None:
    theirs, ours = TRITON_MESSAGES[full_name], OUR_MESSAGES[full_name]
    assert _message_signature(ours) == _message_signature(theirs)
    their_fields = {f.number: _field_signature(f) for f in theirs.fields}
    our_fields = {f.number: _field_signature(f) for f in ours.fields}
    for number, signature in their_fields.items():
        assert our_fields.get(number) == signature, f"{full_name} field {number}"
    extra = {f"{full_name}.{our_fields[n][0]}" for n in set(our_fields) - set(their_fields)}
    assert extra <= NEWER_FIELDS


@pytest.mark.parametrize("full_name", sorted(TRITON_ENUMS))
def test_enum_is_identical(full_name: str) -> None:
    theirs, ours = TRITON_ENUMS[full_name], OUR_ENUMS[full_name]
    assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in theirs.values]


def test_no_extra_enums() -> None:
    assert set(OUR_ENUMS) == set(TRITON_ENUMS)


def test_service_methods_match_tritonclient() -> None:
    theirs = triton_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == SERVICE

    def signature(service: _descriptor.ServiceDescriptor) -> dict[str, tuple[object, ...]]:
        return {
            m.name: (
                m.input_type.full_name,
                m.output_type.full_name,
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.methods
        }

    assert signature(ours) == signature(theirs)
    required = {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    }  # fmt: skip
    assert required <= set(signature(ours))
    assert signature(ours)["ModelStreamInfer"][2:] == (True, True)


# --- messages cross the wire both ways ----------------------------------------


def _our_infer_request() -> grpc_service_pb2.ModelInferRequest:
    request = grpc_service_pb2.ModelInferRequest(
        model_name="mlp-circle", model_version="2", id="req-7"
    )
    request.parameters["priority"].uint64_param = 3
    request.parameters["timeout"].int64_param = 5000
    request.parameters["tag"].string_param = "a/b"
    request.parameters["flag"].bool_param = True
    request.parameters["scale"].double_param = 0.25
    raw = request.inputs.add(name="input", datatype="FP32", shape=[2, 2])
    raw.parameters["binary_data_size"].int64_param = 16
    typed = request.inputs.add(name="ids", datatype="INT64", shape=[3])
    typed.contents.int64_contents.extend([-1, 0, 2**40])
    words = request.inputs.add(name="words", datatype="BYTES", shape=[2])
    words.contents.bytes_contents.extend([b"\x00\xff", b""])
    request.raw_input_contents.append(np.arange(4, dtype="<f4").tobytes())
    out = request.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 2
    return request


def test_our_infer_request_parses_in_tritonclient() -> None:
    ours = _our_infer_request()
    theirs = triton_service_pb2.ModelInferRequest.FromString(ours.SerializeToString())

    assert (theirs.model_name, theirs.model_version, theirs.id) == ("mlp-circle", "2", "req-7")
    assert theirs.parameters["priority"].uint64_param == 3
    assert theirs.parameters["timeout"].int64_param == 5000
    assert theirs.parameters["tag"].string_param == "a/b"
    assert theirs.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert theirs.parameters["scale"].double_param == 0.25
    assert [(i.name, i.datatype, list(i.shape)) for i in theirs.inputs] == [
        ("input", "FP32", [2, 2]),
        ("ids", "INT64", [3]),
        ("words", "BYTES", [2]),
    ]
    assert theirs.inputs[0].parameters["binary_data_size"].int64_param == 16
    assert list(theirs.inputs[1].contents.int64_contents) == [-1, 0, 2**40]
    assert list(theirs.inputs[2].contents.bytes_contents) == [b"\x00\xff", b""]
    np.testing.assert_array_equal(
        np.frombuffer(theirs.raw_input_contents[0], dtype="<f4"), np.arange(4)
    )
    assert theirs.outputs[0].parameters["classification"].int64_param == 2
    # Same field names everywhere, so the text renderings agree as well.
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(
        deterministic=True
    )


def test_tritonclient_request_parses_in_ours() -> None:
    # The request exactly as tritonclient builds it for client.infer(...).
    data = np.array([[0.5, -1.0], [2.0, 3.5]], dtype=np.float32)
    infer_input = triton_grpc.InferInput("input", list(data.shape), "FP32")
    infer_input.set_data_from_numpy(data)
    requested = triton_grpc.InferRequestedOutput("probabilities", class_count=2)
    theirs = triton_grpc._utils._get_inference_request(
        model_name="mlp-circle",
        inputs=[infer_input],
        model_version="1",
        request_id="r1",
        outputs=[requested],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=1,
        timeout=None,
        parameters=None,
    )
    ours = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())

    assert (ours.model_name, ours.model_version, ours.id) == ("mlp-circle", "1", "r1")
    assert ours.parameters["priority"].uint64_param == 1
    assert [(i.name, i.datatype, list(i.shape)) for i in ours.inputs] == [("input", "FP32", [2, 2])]
    np.testing.assert_array_equal(
        np.frombuffer(ours.raw_input_contents[0], dtype="<f4").reshape(2, 2), data
    )
    assert ours.outputs[0].name == "probabilities"
    assert ours.outputs[0].parameters["classification"].int64_param == 2
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)


def test_our_responses_parse_in_tritonclient() -> None:
    response = grpc_service_pb2.ModelInferResponse(model_name="m", model_version="1", id="x")
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 2])
    response.raw_output_contents.append(np.array([1.5, -2.0], dtype="<f4").tobytes())
    stream = grpc_service_pb2.ModelStreamInferResponse(error_message="", infer_response=response)
    theirs = triton_service_pb2.ModelStreamInferResponse.FromString(stream.SerializeToString())
    assert theirs.infer_response.outputs[0].shape == [1, 2]
    assert theirs.infer_response.raw_output_contents == response.raw_output_contents

    stats = grpc_service_pb2.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", inference_count=9, execution_count=4)
    model.inference_stats.queue.count = 9
    model.inference_stats.queue.ns = 123_456
    model.batch_stats.add(batch_size=8).compute_infer.ns = 77
    parsed = triton_service_pb2.ModelStatisticsResponse.FromString(stats.SerializeToString())
    assert parsed.model_stats[0].inference_stats.queue.ns == 123_456
    assert parsed.model_stats[0].batch_stats[0].compute_infer.ns == 77

    index = grpc_service_pb2.RepositoryIndexResponse()
    index.models.add(name="broken", version="1", state="UNAVAILABLE", reason="bad onnx")
    parsed_index = triton_service_pb2.RepositoryIndexResponse.FromString(index.SerializeToString())
    assert parsed_index.models[0].reason == "bad onnx"


# --- config.pbtxt in Triton's text format --------------------------------------

CONFIG_PBTXT = """
name: "mlp-circle"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 64
version_policy: { latest: { num_versions: 2 } }
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 2 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 2 ]
  },
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 2 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 500
  preserve_ordering: false
  priority_levels: 2
  default_priority_level: 1
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 100000
    allow_timeout_override: true
    max_queue_size: 128
  }
  priority_queue_policy {
    key: 2
    value: { timeout_action: DELAY, max_queue_size: 16 }
  }
}
instance_group [
  {
    name: "cpu-pool"
    count: 2
    kind: KIND_CPU
    rate_limiter { resources [ { name: "R1", count: 4 } ] priority: 1 }
  }
]
optimization {
  graph { level: 1 }
  execution_accelerators {
    cpu_execution_accelerator : [ { name : "openvino" } ]
  }
  input_pinned_memory { enable: false }
}
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
parameters [
  { key: "execution_mode" value: { string_value: "0" } }
]
model_warmup [
  {
    name: "zeros"
    batch_size: 4
    inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 2 ] zero_data: true } }
  }
]
response_cache { enable: false }
model_transaction_policy { decoupled: false }
metric_tags { key: "team" value: "ml" }
default_model_filename: "model.onnx"
"""


def test_triton_config_pbtxt_parses() -> None:
    config = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())

    assert (config.name, config.platform, config.max_batch_size) == (
        "mlp-circle",
        "onnxruntime_onnx",
        64,
    )
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 2
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [2]
    assert [o.label_filename for o in config.output] == ["", "labels.txt"]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [8, 16]
    assert batching.max_queue_delay_microseconds == 500
    assert batching.default_queue_policy.max_queue_size == 128
    assert batching.default_queue_policy.allow_timeout_override
    assert (
        batching.priority_queue_policy[2].timeout_action == model_config_pb2.ModelQueuePolicy.DELAY
    )
    group = config.instance_group[0]
    assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)
    assert group.rate_limiter.resources[0].count == 4
    assert config.optimization.graph.level == 1
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert config.parameters["execution_mode"].string_value == "0"
    assert config.model_warmup[0].inputs["input"].WhichOneof("input_data_type") == "zero_data"

    # tritonclient's ModelConfig reads the same text into the same bytes.
    theirs = text_format.Parse(CONFIG_PBTXT, triton_config_pb2.ModelConfig())
    assert theirs.SerializeToString(deterministic=True) == config.SerializeToString(
        deterministic=True
    )


def test_newer_triton_config_fields_parse() -> None:
    text = """
    name: "m"
    backend: "onnxruntime"
    runtime: "libtriton_onnxruntime.so"
    input [ { name: "x" data_type: TYPE_FP16 dims: [ -1 ] is_non_linear_format_io: false } ]
    ensemble_scheduling { step [ { model_name: "a" model_version: -1 } ] max_inflight_responses: 4 }
    model_metrics {
      metric_control [
        {
          metric_identifier { family: "nv_inference_first_response_histogram_ms" }
          histogram_options { buckets: [ 1, 2, 4 ] }
        }
      ]
    }
    """
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.runtime == "libtriton_onnxruntime.so"
    assert config.ensemble_scheduling.max_inflight_responses == 4
    assert list(config.model_metrics.metric_control[0].histogram_options.buckets) == [1, 2, 4]


def test_unknown_config_field_is_rejected() -> None:
    # Why every Triton field must be declared: the text parser is strict.
    with pytest.raises(text_format.ParseError, match="no_such_field"):
        text_format.Parse('name: "m" no_such_field: 1', model_config_pb2.ModelConfig())


# --- a real gRPC server built from the generated code ---------------------------


class _EchoServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Answers ServerLive and echoes ModelInfer's raw inputs as outputs."""

    def ServerLive(self, request, context):  # noqa: N802 - gRPC method name
        return grpc_service_pb2.ServerLiveResponse(live=True)

    def ModelInfer(self, request, context):  # noqa: N802 - gRPC method name
        response = grpc_service_pb2.ModelInferResponse(
            model_name=request.model_name, model_version="1", id=request.id
        )
        for tensor, raw in zip(request.inputs, request.raw_input_contents, strict=True):
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(raw)
        return response


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoServicer(), server)
    reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), server, pool=POOL)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_tritonclient_talks_to_a_server_built_from_our_code(echo_server: str) -> None:
    client = triton_grpc.InferenceServerClient(url=echo_server)
    try:
        assert client.is_server_live()

        data = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
        infer_input = triton_grpc.InferInput("input", list(data.shape), "FP32")
        infer_input.set_data_from_numpy(data)
        result = client.infer("echo", [infer_input], request_id="abc")
        np.testing.assert_array_equal(result.as_numpy("input"), data)
        assert result.get_response().id == "abc"

        # Declared but not implemented RPCs answer UNIMPLEMENTED.
        with pytest.raises(InferenceServerException) as excinfo:
            client.get_system_shared_memory_status()
        assert excinfo.value.status() == "StatusCode.UNIMPLEMENTED"
    finally:
        client.close()


def test_reflection_serves_our_private_pool(echo_server: str) -> None:
    with grpc.insecure_channel(echo_server) as channel:
        remote = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = remote.FindServiceByName(SERVICE)
        assert [m.name for m in service.methods] == [
            m.name
            for m in grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
        ]
        config = remote.FindMessageTypeByName("inference.ModelConfig")
        assert config.fields_by_name["max_batch_size"].number == 4
