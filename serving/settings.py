"""Server settings: environment variables with the ``SERVING_`` prefix, then
command-line flags on top (``dlserve serve --help``).

Built once in the entry point and passed to constructors; no other module
reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]
ControlMode = Literal["none", "explicit", "poll"]
_CACHE_CONFIG = re.compile(r"local,size=(\d+)")


#: cgroup v2's CPU quota ("QUOTA PERIOD" or "max PERIOD"); a container sees its own here.
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup v2
    CPU quota (a container limited to 2 CPUs on a 64-core host gets 2; a
    quota of 1.5 CPUs rounds up). ``cpu_max``: the quota file to read."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SERVING_", use_attribute_docstrings=True, extra="forbid"
    )

    model_repository: Path = Path("models")
    """Folder in Triton's layout: <name>/config.pbtxt, <name>/<version>/model.onnx."""

    host: str = "0.0.0.0"
    """Address the HTTP, gRPC and metrics servers bind to."""

    http_port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port of the KServe V2 REST API (Triton's HTTP API). 0 turns it off."""

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

    max_message_bytes: int = Field(default=16 * 1024 * 1024, gt=0, le=2**31 - 1)
    """Largest gRPC message received or sent; larger ones get RESOURCE_EXHAUSTED
    (over HTTP: a request body over it gets 413). At most 2**31 - 1: gRPC takes
    it as a C int."""

    max_queue_size: int = Field(default=1024, ge=0)
    """Requests waiting per model version before new ones fail fast (0: unbounded).
    A model's config.pbtxt default_queue_policy.max_queue_size overrides it."""

    max_queue_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    """Bytes of tensor data and request ids waiting per model version before new
    requests fail fast with UNAVAILABLE (0: unbounded). One request is always admitted."""

    stream_window: int = Field(default=64, ge=1)
    """Requests of one ModelStreamInfer stream in flight or answered but not yet
    sent; while a stream is at it, the server reads no more of its requests."""

    stream_window_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Bytes of one stream's answers waiting to be sent before reading pauses."""

    inference_threads: int = Field(default_factory=lambda: usable_cpus(), ge=1)
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
    """PEM server certificate (with tls_key) to serve gRPC and HTTP over TLS."""

    tls_key: Path | None = None
    """PEM private key of tls_cert."""

    tls_client_ca: Path | None = None
    """PEM CA bundle: when set, clients must present a certificate it signed (mTLS)."""

    allow_client_shm: bool = False
    """Let clients register system shared-memory regions (POSIX shm under
    /dev/shm) and send tensors by reference; off: the shared-memory RPCs and
    routes are refused, as with Triton's --allow-client-shm=false."""

    http_head_timeout_secs: float = Field(default=10.0, gt=0)
    """REST: seconds a request head may take to arrive; a late one is closed."""

    http_body_timeout_secs: float = Field(default=60.0, gt=0)
    """REST: seconds a request body may take to arrive after its head."""

    loop_watchdog_ms: float = Field(default=0.0, ge=0)
    """Log a warning whenever the event loop could not run for this long
    (serving.watchdog; 0: off). The tests run every server with 100."""

    cache_config: str = ""
    """Triton's response cache: local,size=N gives the server N bytes for the
    answers of models whose config.pbtxt has response_cache { enable: true }
    (serving.response_cache). Empty or size=0: no cache."""

    log_level: str = "INFO"
    """Python logging level name."""

    log_format: Literal["text", "json"] = "text"
    """text for terminals, json (one object a line) for containers."""

    @field_validator("cache_config")
    @classmethod
    def _cache_config(cls, value: str) -> str:
        if value.strip() and _CACHE_CONFIG.fullmatch(value.replace(" ", "")) is None:
            raise ValueError(
                f"expected local,size=N (N bytes for the response cache), got {value!r}; "
                "only Triton's 'local' cache is supported"
            )
        return value

    @property
    def cache_bytes(self) -> int:
        """The response cache's size from cache_config (0: no cache)."""
        match = _CACHE_CONFIG.fullmatch(self.cache_config.replace(" ", ""))
        return int(match.group(1)) if match is not None else 0

    trace_config: list[str] = []
    """--trace-config entries in Triton's spelling (serving.trace_settings):
    mode=opentelemetry, level=TIMESTAMPS, rate=N, count=N, opentelemetry,url=URL, ..."""

    @field_validator("trace_config")
    @classmethod
    def _trace_config(cls, entries: list[str]) -> list[str]:
        from serving.trace_settings import parse

        parse(entries)  # ValueError with the reason
        return entries

    @model_validator(mode="after")
    def _tls_pair(self) -> "ServingSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return self
