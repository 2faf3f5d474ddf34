"""TraceSetting and LogSettings (Triton's trace and logging extensions):
protobuf maps <-> the plain dicts of ``serving.trace_settings`` and
``serving.log_settings``."""

from __future__ import annotations

from serving._generated import grpc_service_pb2 as pb
from serving.errors import InvalidInput
from serving.service import InferenceService


def trace_setting(
    service: InferenceService, request: pb.TraceSettingRequest
) -> pb.TraceSettingResponse:
    """An empty request reads the settings; a setting with no value clears it."""
    tracing = service.tracing
    model = request.model_name
    if request.settings:
        updates = {key: (list(v.value) or None) for key, v in request.settings.items()}
        current = tracing.update_settings(model, updates)
    else:
        current = tracing.get_settings(model)
    value = pb.TraceSettingResponse.SettingValue
    return pb.TraceSettingResponse(settings={k: value(value=v) for k, v in current.items()})


def log_settings(
    service: InferenceService, request: pb.LogSettingsRequest
) -> pb.LogSettingsResponse:
    updates: dict[str, bool | int | str | None] = {}
    for key, setting in request.settings.items():
        choice = setting.WhichOneof("parameter_choice")
        updates[key] = getattr(setting, choice) if choice is not None else None
    current = service.logs.update(updates) if updates else service.logs.get()
    settings = {}
    for key, v in current.items():
        if isinstance(v, bool):
            settings[key] = pb.LogSettingsResponse.SettingValue(bool_param=v)
        elif isinstance(v, int):
            settings[key] = pb.LogSettingsResponse.SettingValue(uint32_param=v)
        elif isinstance(v, str):
            settings[key] = pb.LogSettingsResponse.SettingValue(string_param=v)
        else:  # pragma: no cover - LogSettings holds only these
            raise InvalidInput(f"log setting {key} has no protobuf form")
    return pb.LogSettingsResponse(settings=settings)
