"""The JSON bodies of the non-inference routes, as Triton's HTTP API writes
them (tritonclient.http and perf_analyzer read these field names)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from serving.service import ModelMetadata, ServerMetadata, TensorMetadata
from serving.stats import Duration, VersionStatistics
from serving.versions import IndexEntry

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def server_metadata(meta: ServerMetadata, extra: tuple[str, ...]) -> dict[str, Any]:
    return {"name": meta.name, "version": meta.version, "extensions": [*meta.extensions, *extra]}


def _tensor(t: TensorMetadata) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [_tensor(t) for t in meta.inputs],
        "outputs": [_tensor(t) for t in meta.outputs],
    }


def model_config(config: Message) -> dict[str, Any]:
    """The ModelConfig as Triton's JSON: proto field names, and 64-bit
    integers as JSON numbers (protobuf's JSON mapping writes them as strings;
    Triton converts them back, and its clients read numbers)."""
    body = json_format.MessageToDict(config, preserving_proto_field_name=True)
    _numbers(body, config.DESCRIPTOR)
    return body


def _numbers(body: dict[str, Any], descriptor: Any) -> None:
    for key, value in body.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            message: Any = field.message_type
            if message.GetOptions().map_entry:
                inner = message.fields_by_name["value"]
                if inner.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value.values():
                        _numbers(item, inner.message_type)
                elif inner.type in _INT64:
                    for k in value:
                        value[k] = int(value[k])
            elif isinstance(value, list):
                for item in value:
                    _numbers(item, message)
            elif isinstance(value, dict):
                _numbers(value, message)
        elif field.type in _INT64:
            body[key] = [int(v) for v in value] if isinstance(value, list) else int(value)


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def statistics(stats: list[VersionStatistics]) -> dict[str, Any]:
    return {"model_stats": [_version_stats(v) for v in stats]}


def _version_stats(version: VersionStatistics) -> dict[str, Any]:
    s = version.stats
    return {
        "name": version.name,
        "version": version.version,
        "last_inference": s.last_inference_ms,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {field: _duration(d) for field, d in s.inference_stats().items()},
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": d.count, "ns": 0},
                "compute_infer": _duration(d),
                "compute_output": {"count": d.count, "ns": 0},
            }
            for size, d in sorted(s.batches.items())
        ],
    }


def repository_index(rows: list[IndexEntry]) -> list[dict[str, str]]:
    return [
        {"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows
    ]
