#!/usr/bin/env python3
"""Longer fuzz runs than ``make test`` does of the REST port, the
metrics/live-page port and the model repository in poll mode, each against a
fresh ``dlserve serve`` on loopback (issue 17).

    .venv/bin/python scripts/fuzz_ports.py --target rest --requests 20000
    .venv/bin/python scripts/fuzz_ports.py --target metrics --requests 20000
    .venv/bin/python scripts/fuzz_ports.py --target repository --folders 500
    .venv/bin/python scripts/fuzz_ports.py --requests 2000 --folders 50  # all three

The generators and checks are the tests' (devtools/fuzz_rest.py,
devtools/fuzz_metrics.py, devtools/fuzz_repository.py; no test module is
imported):

- rest: malformed bodies, headers and paths get a 4xx with a JSON
  ``{"error": ...}`` body (200 only for a GET route that takes no body),
  never a 5xx or a dead server; a valid request matches onnxruntime after.
- metrics: Hypothesis' hostile requests (methods, paths, versions, header
  garbage) never get a 5xx, while ``--stalled`` clients that send half a
  request (or nothing) are held open all along and each is dropped within
  the connection timeout (and replaced); /metrics is correct after, and the
  log has no traceback.
- repository: generated model folders (broken or valid, with junk beside
  them) dropped into a polling repository get the right readiness while a
  client thread sends traffic to a sentinel model that never fails, and the
  loop watchdog (100 ms) sees no stall.

Hypothesis shrinks a failure to a small example and prints it; exit status 1
then, 0 with a one-line summary per target otherwise. Each run stops by
itself after its examples. Extra ``dlserve serve`` flags go after ``--``.
"""

from __future__ import annotations

import argparse
import select
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from devtools import fuzz_metrics as fm  # noqa: E402
from devtools import fuzz_repository as frepo  # noqa: E402
from devtools import fuzz_rest as fr  # noqa: E402
from devtools.onnx_models import mlp, write_model  # noqa: E402
from devtools.rest_client import Http  # noqa: E402
from devtools.serverproc import ServerProcess  # noqa: E402
from serving._generated import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

TARGETS = ("rest", "metrics", "repository")
METRICS_MODEL = "hostile"


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, examples), deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip


def progress(target: str, done: int, every: int, started: float, extra: str = "") -> None:
    if done % every == 0:
        print(f"{target}: {done} examples, {time.monotonic() - started:.0f} s {extra}", flush=True)


# --- rest -------------------------------------------------------------------------


def run_rest(args: argparse.Namespace, tmp: Path) -> str:
    repo = fr.build_repo(tmp / "rest")
    kinds: Counter[str] = Counter()
    started = time.monotonic()
    cases = st.one_of(
        fr.bodies.map(lambda b: ("body", (b,))),
        st.tuples(fr.bodies, fr.lengths, fr.encodings, fr.accepts).map(lambda t: ("headers", t)),
        st.tuples(fr.path_parts, fr.methods).map(lambda t: ("path", t)),
    )
    checks: dict[str, Callable[..., None]] = {
        "body": fr.check_body, "headers": fr.check_headers, "path": fr.check_path,
    }  # fmt: skip
    with ServerProcess(repo, *fr.SERVE_ARGS, *args.serve_args) as server:
        api = Http(server.http_url)

        @fuzz_settings(args.requests)
        @given(cases)
        def one(case: tuple[str, tuple[Any, ...]]) -> None:
            kind, values = case
            checks[kind](api, *values)
            kinds[kind] += 1
            progress("rest", sum(kinds.values()), 1000, started, str(dict(kinds)))

        try:
            one()
            assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
            fr.assert_correct(Http(server.http_url), repo / fr.MODEL / "1" / "model.onnx")
        finally:
            api.close()
    return (
        f"{sum(kinds.values())} malformed requests in {time.monotonic() - started:.0f} s, "
        f"each a 4xx JSON error (or 200 for a bodiless GET route): {dict(kinds)}; "
        "the server answered correctly after"
    )


# --- metrics ----------------------------------------------------------------------


class Stallers(threading.Thread):
    """``count`` clients that send half a request (or nothing) and stall,
    held open all along: each one the server drops is replaced; one not
    dropped within PATIENCE is an error."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.stop = threading.Event()
        self.open: list[tuple[socket.socket, float]] = [self._open(i) for i in range(count)]
        self.dropped = 0
        self.errors: list[str] = []

    def _open(self, i: int) -> tuple[socket.socket, float]:
        sock = fm.connect(self.port)
        sock.sendall(fm.STALLS[i % len(fm.STALLS)])
        return sock, time.monotonic()

    def run(self) -> None:
        while not self.stop.wait(0.5) and not self.errors:
            for i, (sock, since) in enumerate(self.open):
                try:
                    if closed(sock):
                        sock.close()
                        self.dropped += 1
                        self.open[i] = self._open(i)
                    elif time.monotonic() - since > fm.PATIENCE:
                        self.errors.append(f"a stalled client kept for {fm.PATIENCE:.0f} s")
                except OSError as exc:
                    self.errors.append(f"stalled client {i}: {exc!r}")

    def close(self) -> None:
        for sock, _ in self.open:
            sock.close()


def closed(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) ``sock``; what it sent is read."""
    while select.select([sock], [], [], 0)[0]:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    return False


def kind_of(answer: bytes) -> str:
    if answer.startswith(b"HTTP/"):
        return str(fm.status_of(answer))
    return "no status line" if answer else "closed"


def run_metrics(args: argparse.Namespace, tmp: Path) -> str:
    repo = tmp / "metrics"
    write_model(repo, METRICS_MODEL, model=mlp(seed=21))
    statuses: Counter[str] = Counter()
    started = time.monotonic()
    with ServerProcess(repo, *args.serve_args) as server:
        port, mark = server.metrics_port, len(server.log())
        stallers = Stallers(port, args.stalled)
        stallers.start()

        @fuzz_settings(args.requests)
        @given(fm.requests())
        def one(case: tuple[bytes, bytes]) -> None:
            line, request = case
            answer = fm.exchange(port, request)
            fm.assert_not_a_server_error(answer, line)
            statuses[kind_of(answer)] += 1
            extra = f"{stallers.dropped} stalled clients dropped"
            progress("metrics", sum(statuses.values()), 1000, started, extra)

        try:
            one()
            stallers.stop.set()
            stallers.join(30)
            assert not stallers.errors, stallers.errors[:3]
            assert all(fm.disconnected(sock) for sock, _ in stallers.open)
            fm.assert_metrics_correct(server, METRICS_MODEL)
            fm.assert_no_traceback(server, mark)
        finally:
            stallers.stop.set()
            stallers.close()
    return (
        f"{sum(statuses.values())} hostile requests in {time.monotonic() - started:.0f} s, "
        f"no 5xx (statuses {dict(statuses.most_common(8))}); {args.stalled} stalled clients "
        f"held all along, {stallers.dropped + args.stalled} dropped on time; /metrics correct "
        "after, no traceback"
    )


# --- repository -------------------------------------------------------------------


def run_repository(args: argparse.Namespace, tmp: Path) -> str:
    repo = frepo.build_repo(tmp / "repository")
    kinds: Counter[str] = Counter()
    started = time.monotonic()
    with ServerProcess(repo, *frepo.POLL, *args.serve_args) as server:

        @fuzz_settings(args.folders)
        @given(
            frepo.BROKEN, st.lists(frepo.JUNK, max_size=4, unique=True),
            st.binary(max_size=64), frepo.NAMES,
        )  # fmt: skip
        def one(broken: str, junk: list[str], payload: bytes, name: str) -> None:
            frepo.check_folder(server, repo, broken, junk, payload, name)
            kinds[broken] += 1
            progress("repository", sum(kinds.values()), 50, started, str(dict(kinds)))

        one()
        assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
        with grpc.insecure_channel(server.url) as channel:
            assert frepo.infer(pb_grpc.GRPCInferenceServiceStub(channel), "sentinel") == "1"
    return (
        f"{sum(kinds.values())} generated folders in {time.monotonic() - started:.0f} s, "
        f"each with the right readiness while traffic flowed, no loop stall (broken: "
        f"{dict(kinds)})"
    )


RUNS: dict[str, Callable[[argparse.Namespace, Path], str]] = {
    "rest": run_rest, "metrics": run_metrics, "repository": run_repository,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    p.add_argument("--requests", type=int, default=20_000, help="rest/metrics examples")
    p.add_argument("--folders", type=int, default=500, help="repository examples")
    p.add_argument("--stalled", type=int, default=64, help="metrics: stalled clients held open")
    p.add_argument("serve_args", nargs="*", help="extra `dlserve serve` flags (after --)")
    args = p.parse_args(argv)
    for target in TARGETS if args.target == "all" else (args.target,):
        with tempfile.TemporaryDirectory(prefix=f"dlserve-fuzz-{target}-") as tmp:
            try:
                summary = RUNS[target](args, Path(tmp))
            except Exception as exc:  # hypothesis has printed the shrunk example
                shown = "".join(traceback.format_exception_only(exc))
                print(f"fuzz_ports {target}: FAIL: {shown}"[:4000], file=sys.stderr)
                return 1
        print(f"fuzz_ports {target}: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
