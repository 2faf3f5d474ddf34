"""Server settings: environment variables with the ``SERVING_`` prefix, then
command-line flags on top (``dlserve serve --help``).

Built once in the entry point and passed to constructors; no other module
reads ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
ControlMode = Literal["none", "explicit", "poll"]


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SERVING_", use_attribute_docstrings=True, extra="forbid"
    )

    model_repository: Path = Path("models")
    """Folder in Triton's layout: <name>/config.pbtxt, <name>/<version>/model.onnx."""

    host: str = "0.0.0.0"
    """Address the gRPC and metrics servers bind to."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port (KServe V2 inference, health, reflection). 0 picks a free port."""

    metrics_port: int = Field(default=8002, ge=0, le=65535)
    """HTTP port for /metrics and the live page. 0 picks a free port."""

    metrics_enabled: bool = True
    """Record Prometheus metrics (the HTTP endpoint is served either way)."""

    device: Device = "auto"
    """auto: CUDA when onnxruntime-gpu sees a GPU, else CPU; cuda: fail loads without it."""

    model_control_mode: ControlMode = "none"
    """none: serve what is there at start; explicit: allow load/unload RPCs; poll: rescan."""

    repository_poll_secs: float = Field(default=15.0, gt=0)
    """Rescan interval with model_control_mode=poll."""

    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED."""

    max_queue_size: int = Field(default=1024, ge=0)
    """Requests waiting per model version before new ones fail fast (0: unbounded).
    A model's config.pbtxt default_queue_policy.max_queue_size overrides it."""

    inference_threads: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    """Threads running onnxruntime (it releases the GIL): batches in flight per server."""

    intra_op_threads: int = Field(default=1, ge=0)
    """onnxruntime intra-op threads per session (0: onnxruntime's default)."""

    inter_op_threads: int = Field(default=1, ge=0)
    """onnxruntime inter-op threads per session (0: onnxruntime's default)."""

    exit_timeout_secs: float = Field(default=30.0, ge=0)
    """On SIGTERM/SIGINT: how long in-flight and queued work may take to finish."""

    auth_token_file: Path | None = None
    """File holding the bearer token required on inference and repository RPCs."""

    tls_cert: Path | None = None
    """PEM server certificate (with tls_key) to serve gRPC over TLS."""

    tls_key: Path | None = None
    """PEM private key of tls_cert."""

    tls_client_ca: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mTLS)."""

    log_level: str = "INFO"
    """Python logging level name."""

    log_format: Literal["text", "json"] = "text"
    """text for terminals, json (one object a line) for containers."""

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServingSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self
