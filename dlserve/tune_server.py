"""``dlserve tune``'s candidates: a config per point of the search space, a
real ``dlserve serve`` process per candidate, and its load levels measured by
``dlserve.bench`` (the same closed loop as ``dlserve bench``).

Each candidate runs in a server process of its own (``python -m dlserve
serve``, what a user runs), on a temporary copy of the model's folder with the
candidate's config.pbtxt, on ports the OS picks (read back from the server's
"serving ... on grpc HOST:PORT" log line), in a session of its own so a Ctrl-C
at the terminal reaches tune, which stops the server. The server flags a point
sets: ``--inference-threads`` (with the config's instance_group count, the
batches in flight at once) and ``--intra-op-threads``.

What a user can fix (a model that is not there, a config tune cannot vary)
raises `dlserve.errors.CliError`; a candidate whose server does not serve the model is a
measured failure (`CandidateFailed`), not the end of the search.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

from dlserve.errors import ClientError, CliError
from dlserve.processes import terminate
from dlserve.tune_search import Level, settle

#: The point's keys (dlserve.tune builds the space with these names).
MAX_BATCH = "max_batch_size"
DELAY = "max_queue_delay_us"
PREFERRED = "preferred"
INSTANCES = "instances"
INTRA_OP = "intra_op_threads"

#: The server's "ready" line (serving.app): "... on [http H:P, ]grpc HOST:PORT, metrics ...".
_SERVING = re.compile(r"dlserve serving .* on (?:http \S+, )?grpc (\S+):(\d+),")
_NOT_READY = "NOT ready"


class CandidateFailed(Exception):
    """A candidate's server did not serve the model (its reason from the log)."""


def base_config(repository: Path, model: str) -> Any:
    """The model's own config (empty if it has none: the server completes it)."""
    from serving import repository as repo
    from serving._generated import model_config_pb2 as mc
    from serving.errors import ModelLoadError

    folder = repository / model
    if not folder.is_dir():
        raise CliError(f"no model folder {folder}")
    config = mc.ModelConfig(name=model)
    path = folder / repo.CONFIG_FILE
    if path.is_file():
        try:
            config = repo.read_config(path)
        except ModelLoadError as exc:
            raise CliError(f"{path}: {exc}") from exc
    if config.platform == "ensemble":
        raise CliError(f"{model} is an ensemble: tune one of its ONNX steps instead")
    return config


def candidate_config(base: Any, point: Mapping[str, int]) -> Any:
    """``base`` with the point's max_batch_size, dynamic batching (queue delay,
    preferred batch size) and instance count; everything else kept."""
    from serving._generated import model_config_pb2 as mc

    config = mc.ModelConfig()
    config.CopyFrom(base)
    batch = point[MAX_BATCH]
    config.max_batch_size = batch
    if batch > 0:
        db = config.dynamic_batching
        db.SetInParent()
        db.max_queue_delay_microseconds = point[DELAY]
        del db.preferred_batch_size[:]
        if point[PREFERRED]:
            db.preferred_batch_size.append(batch)
    kind = base.instance_group[0].kind if base.instance_group else None
    del config.instance_group[:]
    group = config.instance_group.add(count=point[INSTANCES])
    if kind is not None:
        group.kind = kind
    return config


def config_text(config: Any) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(config))


def serve_flags(point: Mapping[str, int]) -> list[str]:
    """The ``dlserve serve`` flags the point sets."""
    return [
        "--inference-threads",
        str(point[INSTANCES]),
        "--intra-op-threads",
        str(point[INTRA_OP]),
    ]


@dataclass
class Settings:
    """How each candidate is served and driven (from tune's flags)."""

    model: str
    concurrency: list[int]
    duration: float
    warmup: float
    budget_ms: float
    device: str = "auto"
    #: Windows per level until two agree within this fraction (0: one window).
    stability: float = 0.0
    max_windows: int = 1
    start_timeout: float = 120.0


class CandidateServer:
    """``python -m dlserve serve`` on ``repository`` with ``flags``, until
    stop(); its output (JSON log lines) in ``log_path``."""

    def __init__(self, repository: Path, flags: list[str], log_path: Path, timeout: float) -> None:
        self.command = [
            sys.executable, "-m", "dlserve", "serve", "--model-repository", str(repository),
            "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
            "--log-format", "json", *flags,
        ]  # fmt: skip
        self.timeout = timeout
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def log_lines(self) -> list[str]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(str(json.loads(raw).get("message", raw)))
            except (ValueError, AttributeError):
                lines.append(raw)
        return lines

    def _reason(self) -> str:
        lines = self.log_lines()
        problems = [ln for ln in lines if "fail" in ln.lower() or "error" in ln.lower()]
        return (problems or lines or ["no output"])[-1]

    def start(self) -> "CandidateServer":
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CandidateFailed(f"server exited ({self.proc.returncode}): {self._reason()}")
            for line in self.log_lines():
                found = _SERVING.search(line)
                if found:
                    if _NOT_READY in line:
                        raise CandidateFailed(f"model not ready: {self._reason()}")
                    self.url = f"{found.group(1)}:{found.group(2)}"
                    return self
            time.sleep(0.05)
        raise CandidateFailed(f"server not serving after {self.timeout:g}s: {self._reason()}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 30)

    def __enter__(self) -> "CandidateServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def sweep(url: str, settings: Settings) -> list[Level]:
    """The concurrency levels in rising order, until one is over the budget
    (or has errors): that level is measured and kept, the higher ones are
    not. Each level is measured in windows until stable (`settle`); only the
    first window of a level has the warm-up."""
    from dlserve import bench

    def window(concurrency: int, i: int) -> Level:
        args = argparse.Namespace(
            url=url, protocol="grpc", model=settings.model, version="", batch_size=1,
            warmup=settings.warmup if i == 0 else 0.0, duration=settings.duration,
            streaming=False, auth_token=None,
        )  # fmt: skip
        try:
            (result,) = bench.measure(args, [concurrency])
        except ClientError as exc:
            raise CandidateFailed(str(exc)) from exc
        return Level(concurrency, result.throughput_rps, result.p99_ms, result.errors)

    levels: list[Level] = []
    for c in sorted(set(settings.concurrency)):
        level = settle(partial(window, c), settings.stability, settings.max_windows)
        levels.append(level)
        if not level.within(settings.budget_ms):
            break
    return levels


class Candidates:
    """Serves and measures points of the space on a temporary copy of the model."""

    def __init__(self, repository: Path, settings: Settings) -> None:
        self.settings = settings
        self.base = base_config(repository, settings.model)
        self._tmp = Path(tempfile.mkdtemp(prefix="dlserve-tune-"))
        self.repository = self._tmp / "repository"
        self.folder = self.repository / settings.model
        shutil.copytree(repository / settings.model, self.folder, symlinks=False)
        #: The reason each failed point did not measure, by point.
        self.failures: dict[tuple[int, ...], str] = {}

    def measure(self, key: tuple[int, ...], point: Mapping[str, int]) -> list[Level]:
        config = candidate_config(self.base, point)
        (self.folder / "config.pbtxt").write_text(config_text(config))
        flags = ["--device", self.settings.device, *serve_flags(point)]
        try:
            log = self._tmp / "server.log"
            with CandidateServer(
                self.repository, flags, log, self.settings.start_timeout
            ) as server:
                return sweep(server.url, self.settings)
        except CandidateFailed as exc:
            self.failures[key] = str(exc)
            return []

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
