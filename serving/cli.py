"""``dlserve serve``, ``dlserve predict`` and ``dlserve bench``.

Registered into the ``dlserve`` parser by ``dlserve.cli``. Imports of grpc,
onnxruntime and the server happen inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dlserve.argparsing import add_command
from dlserve.errors import CliError

#: serve flags that map 1:1 onto ServingSettings fields (None = not given).
_SETTINGS_FLAGS = (
    "model_repository", "host", "http_port", "grpc_port", "metrics_port", "device",
    "model_control_mode", "repository_poll_secs", "max_message_bytes", "max_queue_size",
    "max_queue_bytes",
    "stream_window", "stream_window_bytes", "inference_threads",
    "intra_op_threads", "inter_op_threads", "exit_timeout_secs", "auth_token_file", "tls_cert",
    "tls_key", "tls_client_ca", "log_level", "log_format", "cache_config", "allow_client_shm",
    "trace_config",
)  # fmt: skip


def register(sub: Any) -> None:
    p = add_command(sub, "serve", run_serve)
    p.add_argument("--model-repository", type=Path, metavar="DIR", help="default: models")
    p.add_argument("--host", help="bind address (default 0.0.0.0)")
    p.add_argument("--http-port", type=int, metavar="PORT", help="REST API; default 8000, 0: off")
    p.add_argument("--grpc-port", type=int, metavar="PORT", help="default 8001")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="default 8002")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument(
        "--model-control-mode", choices=("none", "explicit", "poll"), help="default none"
    )
    p.add_argument("--repository-poll-secs", type=float, metavar="S", help="poll interval")
    p.add_argument(
        "--load-model", action="append", metavar="NAME", default=[],
        help="with --model-control-mode explicit: load this model at start ('*' = all)",
    )  # fmt: skip
    p.add_argument("--max-message-bytes", type=int, metavar="N", help="default 16 MiB")
    p.add_argument("--max-queue-size", type=int, metavar="N", help="queued requests per model")
    p.add_argument(
        "--max-queue-bytes", type=int, metavar="N",
        help="queued bytes (tensors and ids) per model (256 MiB)",
    )  # fmt: skip
    p.add_argument(
        "--stream-window", type=int, metavar="N",
        help="requests of one stream in flight or unsent before reading pauses (64)",
    )  # fmt: skip
    p.add_argument(
        "--stream-window-bytes", type=int, metavar="N",
        help="bytes of one stream's unsent answers before reading pauses (64 MiB)",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="server processes sharing the HTTP and gRPC ports (SO_REUSEPORT); default 1",
    )  # fmt: skip
    p.add_argument("--inference-threads", type=int, metavar="N", help="onnxruntime threads")
    p.add_argument("--intra-op-threads", type=int, metavar="N")
    p.add_argument("--inter-op-threads", type=int, metavar="N")
    p.add_argument("--exit-timeout-secs", type=float, metavar="S", help="drain time on SIGTERM")
    p.add_argument("--auth-token-file", type=Path, metavar="FILE")
    p.add_argument("--tls-cert", type=Path, metavar="FILE")
    p.add_argument("--tls-key", type=Path, metavar="FILE")
    p.add_argument("--tls-client-ca", type=Path, metavar="FILE", help="require client certs")
    p.add_argument("--no-metrics", action="store_true", help="do not record metrics")
    p.add_argument(
        "--cache-config", metavar="local,size=N",
        help="response cache of N bytes for models with response_cache { enable: true }",
    )  # fmt: skip
    p.add_argument(
        "--allow-client-shm", nargs="?", const=True, type=_on_off, metavar="true|false",
        help="let clients register system shared-memory regions (Triton's flag; default off)",
    )  # fmt: skip
    p.add_argument("--log-level", metavar="LEVEL")
    p.add_argument("--log-format", choices=("text", "json"))
    p.add_argument(
        "--trace-config", action="extend", nargs="+", metavar="[MODE,]K=V",
        help="OpenTelemetry tracing in Triton's spelling (repeatable, or several after one "
        "flag): level=TIMESTAMPS, rate=N, count=N, opentelemetry,url=http://HOST:4318/v1/traces, "
        "opentelemetry,resource=K=V; see docs/monitoring.md",
    )  # fmt: skip

    p = add_command(sub, "predict", run_predict)
    p.add_argument(
        "--url", default="127.0.0.1:8001",
        help="HOST:PORT of the server (gRPC 8001, or HTTP 8000 with --protocol http); "
        "http://HOST:PORT or https://HOST:PORT picks HTTP",
    )  # fmt: skip
    p.add_argument("--protocol", choices=("grpc", "http"), help="default: from --url, else grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--data", required=True, help="JSON, or @FILE to read it from a file")
    p.add_argument("--top", type=int, default=3, metavar="K", help="top classes to show")
    p.add_argument("--auth-token", help="bearer token, if the server requires one")
    p.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA to verify a TLS server")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S")

    p = add_command(sub, "bench", run_bench)
    p.add_argument("--url", default="127.0.0.1:8001", help="HOST:PORT, or http://HOST:PORT")
    p.add_argument("--protocol", choices=("grpc", "http"), help="default: from --url, else grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--version", default="")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated, e.g. 1,8,32")
    p.add_argument("--duration", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--batch-size", type=int, default=1, metavar="B", help="rows per request")
    p.add_argument("--streaming", action="store_true", help="use ModelStreamInfer")
    p.add_argument("--json", type=Path, metavar="FILE", help="write one record per concurrency")
    p.add_argument("--auth-token")


def _on_off(value: str) -> bool:
    """Triton spells its boolean flags ``--flag=true``; a bare ``--flag`` is on."""
    word = value.strip().lower()
    if word not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return word in ("true", "1", "yes", "on")


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from serving.settings import ServingSettings

    overrides = {k: getattr(args, k) for k in _SETTINGS_FLAGS if getattr(args, k) is not None}
    if args.no_metrics:
        overrides["metrics_enabled"] = False
    try:
        return ServingSettings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "settings"
        raise CliError(f"{where.replace('_', '-')}: {first.get('msg')}") from exc


def run_serve(args: argparse.Namespace) -> int:
    """run the inference server (KServe V2 REST + gRPC, Prometheus metrics)

    Serve a Triton-layout model repository over KServe V2 REST and gRPC. Every flag can also be
    set by an environment variable SERVING_<FLAG> (e.g. SERVING_GRPC_PORT=9001); flags win.
    """
    import asyncio

    settings = _settings(args)
    if not settings.model_repository.is_dir():
        raise CliError(f"model repository {settings.model_repository} is not a folder")
    if args.load_model and settings.model_control_mode != "explicit":
        raise CliError("--load-model needs --model-control-mode explicit")
    if args.workers > 1 and settings.allow_client_shm:
        raise CliError("--allow-client-shm needs --workers 1: each worker has its own regions")
    _check_ports(settings)

    from serving.app import StartupError, serve
    from serving.log import configure_logging
    from serving.threads import exit_code

    configure_logging(settings.log_level, settings.log_format)
    if args.workers < 1:
        raise CliError("--workers must be >= 1")
    if args.workers > 1:
        from serving.workers import run_workers

        return run_workers(settings, args.load_model, args.workers)
    runner: Any
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - non-Linux
        runner = asyncio.run
    try:
        code = int(runner(serve(settings, args.load_model)))
    except StartupError as exc:
        raise CliError(str(exc)) from exc
    return exit_code(code)


def _check_ports(settings: Any) -> None:
    """Fail fast, in one line, when a port is taken: before the models load
    (a large repository can take minutes) and before gRPC core logs its own
    multi-line bind error. The server still reports a bind that fails later."""
    flags = (
        ("--http-port", settings.http_port),
        ("--grpc-port", settings.grpc_port),
        ("--metrics-port", settings.metrics_port),
    )
    for i, (flag, port) in enumerate(flags):
        for other, other_port in flags[i + 1 :]:
            if port and port == other_port:
                raise CliError(f"{flag} and {other} are both {port}")
    for flag, port in flags:
        if port:
            _check_port(settings.host, port, flag)


def _check_port(host: str, port: int, flag: str) -> None:
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CliError(f"--host {host}: {exc.strerror}") from exc
    for family, kind, proto, _, address in addresses:
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. no IPv6 here: the server reports what it cannot bind
        with probe:
            # As the servers do: a port left in TIME_WAIT is free to take.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CliError(
                        f"{flag} {port}: the port is already in use on {host} (another "
                        f"server running?); stop it or choose another {flag}"
                    ) from exc
                if exc.errno == errno.EACCES:
                    raise CliError(
                        f"{flag} {port}: permission denied on {host} (ports below 1024 "
                        "need privileges)"
                    ) from exc


def run_predict(args: argparse.Namespace) -> int:
    """send one inference request and print the outputs as JSON

    Send one inference request (gRPC, or REST with --protocol http or an http:// --url). --data
    is JSON: a nested list for the model's single input, or an object {input_name: nested list}.
    A missing batch dimension is added. For classifiers the top classes are printed with labels.
    """
    from dlserve.predict import predict

    return predict(args)


def run_bench(args: argparse.Namespace) -> int:
    """closed-loop gRPC or HTTP load: throughput and latency percentiles

    Keep N requests in flight for a duration at each concurrency and report req/s, samples/s,
    p50/p90/p99 latency and errors.
    """
    from dlserve.bench import main

    return main(args)
