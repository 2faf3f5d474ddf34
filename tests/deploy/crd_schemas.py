"""JSON schemas for the custom resources in deploy/, limited to the fields we use.

kubernetes-validate knows only built-in kinds. For the CRDs we write, these
schemas restate the CRDs' structure for the fields our manifests set -- names,
types, enums and patterns as the CRDs define them:

- ServiceMonitor, PrometheusRule: prometheus-operator's monitoring.coreos.com/v1
  CRDs.
- ServingRuntime (serving.kserve.io/v1alpha1, ServingRuntimeSpec: the
  supportedModelFormats, protocolVersions, multiModel and annotations fields
  plus the inlined pod fields `containers`) and InferenceService
  (serving.kserve.io/v1beta1: predictor's ComponentExtensionSpec fields
  minReplicas/maxReplicas/scaleMetric/scaleTarget and ModelSpec's
  modelFormat/runtime/protocolVersion/storageUri/resources).

Objects are closed (additionalProperties: false), so a misspelt or unknown
field fails: using a new field means checking it in the CRD and adding it
here. Embedded core types (Container, ResourceRequirements) are left open
here and validated by kubernetes-validate instead (tests wrap them in a Pod).
"""

from __future__ import annotations

from typing import Any

_STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
#: prometheus-operator's Duration pattern.
_DURATION = {
    "type": "string",
    "pattern": (
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
        r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
    ),
}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _closed(
                {
                    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "namespace": {"type": "string"},
                    "labels": _STR_MAP,
                    "annotations": _STR_MAP,
                },
                ["name"],
            ),
            "spec": spec,
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _closed(
        {
            "selector": _closed({"matchLabels": _STR_MAP}),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _closed(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": _DURATION,
                        "scrapeTimeout": _DURATION,
                    }
                ),
            },
        },
        ["selector", "endpoints"],
    ),
)

PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _closed(
        {
            "groups": {
                "type": "array",
                "items": _closed(
                    {
                        "name": {"type": "string", "minLength": 1},
                        "interval": _DURATION,
                        "rules": {
                            "type": "array",
                            "items": _closed(
                                {
                                    "record": {"type": "string"},
                                    "alert": {"type": "string"},
                                    "expr": {"type": "string", "minLength": 1},
                                    "for": _DURATION,
                                    "labels": _STR_MAP,
                                    "annotations": _STR_MAP,
                                },
                                ["expr"],
                            ),
                        },
                    },
                    ["name", "rules"],
                ),
            }
        },
        ["groups"],
    ),
)

#: constants.InferenceServiceProtocol
_PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}

SERVING_RUNTIME = _resource(
    "serving.kserve.io/v1alpha1",
    "ServingRuntime",
    _closed(
        {
            "annotations": _STR_MAP,
            "supportedModelFormats": {
                "type": "array",
                "items": _closed(
                    {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "autoSelect": {"type": "boolean"},
                        "priority": {"type": "integer", "minimum": 1},
                    },
                    ["name"],
                ),
            },
            "protocolVersions": {"type": "array", "items": _PROTOCOLS},
            "multiModel": {"type": "boolean"},
            "containers": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        },
        ["containers"],
    ),
)

INFERENCE_SERVICE = _resource(
    "serving.kserve.io/v1beta1",
    "InferenceService",
    _closed(
        {
            "predictor": _closed(
                {
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 0},
                    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                    "scaleTarget": {"type": "integer"},
                    "model": _closed(
                        {
                            "runtime": {"type": "string"},
                            "modelFormat": _closed(
                                {"name": {"type": "string"}, "version": {"type": "string"}},
                                ["name"],
                            ),
                            "protocolVersion": _PROTOCOLS,
                            "storageUri": {
                                "type": "string",
                                "pattern": r"^(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://",
                            },
                            "resources": {"type": "object"},
                        },
                        ["modelFormat"],
                    ),
                },
                ["model"],
            )
        },
        ["predictor"],
    ),
)

BY_KIND = {
    "ServiceMonitor": SERVICE_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
    "ServingRuntime": SERVING_RUNTIME,
    "InferenceService": INFERENCE_SERVICE,
}
