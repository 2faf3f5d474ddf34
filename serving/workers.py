"""``dlserve serve --workers N``: N server processes share the HTTP and gRPC ports.

Python runs one request at a time per process (the GIL), and for small
models almost all of a request's CPU is gRPC and Python per-call work, so a
second process is the only way to use a second core for them. Each worker
is a full server (own event loop, models, batchers) bound to the same port
with SO_REUSEPORT (HTTP too: ``http_api.server`` builds that socket); the
kernel spreads connections across them. The
supervisor (this process) starts them, serves ``/metrics`` and the live page
from the workers' shared prometheus_client multiprocess files, forwards
SIGTERM/SIGINT so every worker drains, and exits 0 when they all did.

Limits, by design: explicit model control would reach only the worker that
answers the RPC, so it needs ``--workers 1``; ModelStatistics answers for
the worker that received the call.

`run_workers` raises `WorkersError` when the workers cannot start as asked
(``dlserve.cli`` turns it into the command's one stderr line).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0


class WorkersError(Exception):
    """The workers cannot start as asked; `str(exc)` is one line for the user."""


def _spawn(settings: ServingSettings, load_models: list[str], index: int, metrics_dir: str):  # type: ignore[no-untyped-def]
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable, "-m", "serving.workers",
        "--settings-json", settings.model_dump_json(),
        "--metrics-dir", metrics_dir,
        "--ready-fd", str(write_fd),
        "--index", str(index),
        *(x for name in load_models for x in ("--load-model", name)),
    ]  # fmt: skip
    proc = subprocess.Popen(command, pass_fds=(write_fd,), stdin=subprocess.DEVNULL)
    os.close(write_fd)
    return proc, read_fd


def _wait_ready(children: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = {fd: proc for proc, fd in children}
    buffers: dict[int, bytes] = {fd: b"" for fd in pending}
    while pending:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise WorkersError(f"{len(pending)} worker(s) not ready after {READY_TIMEOUT_S:.0f} s")
        readable, _, _ = select.select(list(pending), [], [], min(timeout, 1.0))
        for fd in readable:
            chunk = os.read(fd, 4096)
            buffers[fd] += chunk
            if b"\n" in buffers[fd] or not chunk:
                line = buffers[fd].split(b"\n", 1)[0].decode(errors="replace")
                del pending[fd]
                if line != "ready":
                    raise WorkersError(
                        line.removeprefix("error ") or "a worker exited during start"
                    )


def run_workers(settings: ServingSettings, load_models: list[str], workers: int) -> int:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    from serving.http_server import MetricsHttpServer
    from serving.metrics_app import make_app

    if settings.grpc_port == 0:
        raise WorkersError("--workers > 1 needs a fixed --grpc-port (workers share it)")
    if settings.model_control_mode == "explicit":
        raise WorkersError(
            "--model-control-mode explicit needs --workers 1 (a load would reach one worker)"
        )
    metrics_dir = tempfile.mkdtemp(prefix="dlserve-metrics-")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    children: list[tuple[subprocess.Popen[bytes], int]] = []
    http = None
    failed = False
    try:
        children = [_spawn(settings, load_models, i, metrics_dir) for i in range(workers)]
        _wait_ready(children)
        try:
            http = MetricsHttpServer(make_app(registry), settings.host, settings.metrics_port)
        except OSError as exc:
            raise WorkersError(
                f"cannot listen for metrics on {settings.host}:{settings.metrics_port}: "
                f"{exc.strerror}"
            ) from exc
        http.start()
        logger.info("%d workers share %sgrpc port %d; metrics on port %d", workers,
                    f"http port {settings.http_port}, " if settings.http_port else "",
                    settings.grpc_port, http.port)  # fmt: skip
        while not stop.wait(0.5):
            dead = [p for p, _ in children if p.poll() is not None]
            if dead:
                logger.error("worker pid %d exited with %d; stopping all workers",
                             dead[0].pid, dead[0].returncode)  # fmt: skip
                failed = True
                break
    finally:
        for proc, fd in children:
            os.close(fd)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in children:
            try:
                proc.wait(settings.exit_timeout_secs + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                failed = True
            failed = failed or proc.returncode != 0
            mark_process_dead(proc.pid, metrics_dir)  # type: ignore[no-untyped-call]
        if http is not None:
            http.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


def _worker_main() -> int:
    """Entry point of one worker process (``python -m serving.workers``)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings-json", required=True)
    parser.add_argument("--metrics-dir", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--load-model", action="append", default=[])
    args = parser.parse_args()
    # prometheus_client picks its multi-process value class at import time.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = args.metrics_dir

    import uvloop

    from serving.app import StartupError, serve
    from serving.log import configure_logging
    from serving.threads import exit_code

    settings = ServingSettings.model_validate_json(args.settings_json)
    configure_logging(settings.log_level, settings.log_format)
    ready = os.fdopen(args.ready_fd, "w")

    def started(_: object) -> None:
        ready.write("ready\n")
        ready.flush()

    try:
        code = int(uvloop.run(serve(settings, args.load_model, worker=True, on_started=started)))
        return exit_code(code)  # a load still running: leave without tearing it down
    except StartupError as exc:
        ready.write(f"error {exc}\n")
        ready.flush()
        return 2


if __name__ == "__main__":
    sys.exit(_worker_main())
