"""The metrics port under hostile clients (serving/http_server.py).

A real ``dlserve serve`` is attacked on its metrics port over raw sockets:

- a burst of 256 scrapers, queued by the kernel while the server is paused
  (SIGSTOP), is queued in full and every scraper is answered;
- clients that send half a request (or nothing) and stall are disconnected
  after the connection timeout, and while hundreds of them hang on, more
  than the server keeps, /metrics still answers;
- odd paths (NUL, non-UTF-8 escapes, ``..``, very long names and heads)
  get a 4xx, never a 500, and leave no traceback in the server log;
- Hypothesis sends ``FUZZ_EXAMPLES`` requests of random methods, paths,
  versions and header garbage: no answer is a 5xx, and the server is alive
  and /metrics correct afterwards.

Two checks need a seam the server process does not offer and start
``MetricsHttpServer`` in-process: the bound on request threads, and a
client that stops reading its answer.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry

from devtools import fuzz_metrics as fm
from devtools.fuzz_metrics import (
    PATIENCE,
    STALLS,
    assert_no_traceback,
    assert_not_a_server_error,
    connect,
    disconnected,
    exchange,
    get,
    read_all,
    requests,
    status_of,
)
from devtools.onnx_models import mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving.http_server import MAX_PENDING, MAX_THREADS, Limits, MetricsHttpServer
from serving.metrics_app import make_app

MODEL = "hostile"
SCRAPERS = 256
#: More stalled clients than the server keeps waiting and than it has threads.
STALLED = MAX_PENDING + MAX_THREADS + 50
FUZZ_EXAMPLES = 2000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("hostile-repo")
    write_model(repo, MODEL, model=mlp(seed=21))
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo) as proc:
        yield proc


@pytest.fixture
def paused_server(repo: Path) -> Iterator[ServerProcess]:
    """A server of its own for a test that stops it with SIGSTOP: its event
    loop watchdog is off (a stopped process is a stalled loop)."""
    with ServerProcess(repo, env={"SERVING_LOOP_WATCHDOG_MS": "0"}) as proc:
        yield proc


# --- raw HTTP (the rest is devtools/fuzz_metrics.py's) -----------------------------


def assert_metrics_correct(server: ServerProcess) -> None:
    fm.assert_metrics_correct(server, MODEL)


def stopped(pid: int) -> bool:
    """Every thread of process ``pid`` is stopped (state T)."""
    try:
        stats = [(t / "stat").read_text() for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:  # a thread ended while we looked
        return False
    return all(stat.rpartition(")")[2].split()[0] == "T" for stat in stats)


def listen_queue(port: int) -> int:
    """Connections the kernel holds for the listening socket on ``port``
    (``rx_queue`` of a LISTEN row in /proc/net/tcp is the accept queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return int(queues.split(":")[1], 16)
    raise AssertionError(f"no listening socket on port {port}")


# --- the server process ------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_a_burst_of_256_scrapers_is_queued_and_every_one_answered(
    paused_server: ServerProcess,
) -> None:
    server = paused_server
    assert server.proc is not None
    pid = server.proc.pid
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    sockets: list[socket.socket] = []
    os.kill(pid, signal.SIGSTOP)  # nothing accepted: the backlog must hold them all
    try:
        assert wait_for(lambda: stopped(pid), PATIENCE)
        for _ in range(SCRAPERS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.metrics_port))
            sockets.append(sock)
        queued = wait_for(lambda: listen_queue(server.metrics_port) >= SCRAPERS, PATIENCE)
        depth = listen_queue(server.metrics_port)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert queued, f"the kernel queued only {depth} of {SCRAPERS} connections"
        for sock in sockets:
            sock.settimeout(PATIENCE)
            sock.sendall(request)
        answers = [read_all(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert [status_of(a) for a in answers] == [200] * SCRAPERS
    assert all(b"dlserve_model_ready" in a for a in answers)


def test_256_concurrent_scrapers_are_all_answered(server: ServerProcess) -> None:
    start = threading.Barrier(SCRAPERS)

    def scrape(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=PATIENCE)
        try:
            start.wait(PATIENCE)
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            body = reply.read()
            return reply.status if b"dlserve_requests_total" in body else -reply.status
        finally:
            conn.close()

    with ThreadPoolExecutor(SCRAPERS) as pool:
        statuses = list(pool.map(scrape, range(SCRAPERS)))
    assert statuses == [200] * SCRAPERS


def test_stalled_clients_are_dropped_after_the_timeout_while_metrics_answers(
    server: ServerProcess,
) -> None:
    mark = len(server.log())
    stalled: list[socket.socket] = []
    try:
        for i in range(STALLED):
            sock = connect(server.metrics_port)
            sock.sendall(STALLS[i % len(STALLS)])
            stalled.append(sock)
        # More stalled clients than request threads and than the server keeps
        # waiting for: scrapes are still answered.
        for _ in range(3):
            assert_metrics_correct(server)
        assert all(disconnected(sock) for sock in stalled)
    finally:
        for sock in stalled:
            sock.close()
    assert_metrics_correct(server)
    assert_no_traceback(server, mark)


ODD_PATHS = [
    "/static/%00",
    "/static/" + "a" * 5000,
    "/" + "b" * 5000,
    "/static/%ff",
    "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
    "/static/../../etc/passwd",
    "/static/..%2f..%2fetc%2fpasswd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/../../../../etc/passwd",
    "/static/live.js%00.html",
    "/static/live.js/",
    "/static/.",
    "/static/",
    "/static/%",
    "/static/%zz",
    "/%00",
    "/static/" + "%ff" * 3000,
    "/static/\x7f\x01",
]


@pytest.mark.parametrize("path", ODD_PATHS, ids=lambda p: p[:40])
def test_odd_paths_get_404_without_a_traceback(server: ServerProcess, path: str) -> None:
    mark = len(server.log())
    status, _ = get(server.metrics_port, path)
    assert status == 404
    assert_no_traceback(server, mark)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /static/" + b"c" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"d" * 100_000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"X-Many: e\r\n" * 5000 + b"\r\n",
        b"GET /metrics?" + b"f=1&" * 30_000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["long-path", "long-header", "many-headers", "long-query"],
)
def test_a_huge_request_head_gets_4xx(server: ServerProcess, request_head: bytes) -> None:
    mark = len(server.log())
    status = status_of(exchange(server.metrics_port, request_head))
    assert 400 <= status < 500
    assert_no_traceback(server, mark)
    assert_metrics_correct(server)


# --- fuzz (the generator and the check are devtools/fuzz_metrics.py's, which
# ``scripts/fuzz_ports.py --target metrics`` runs for longer) ----------------------


def test_fuzzed_requests_never_get_a_5xx(server: ServerProcess) -> None:
    port = server.metrics_port
    mark = len(server.log())

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def one(case: tuple[bytes, bytes]) -> None:
        line, request = case
        assert_not_a_server_error(exchange(port, request), line)

    one()
    assert_metrics_correct(server)
    assert_no_traceback(server, mark)


# --- in-process: the thread bound and a client that stops reading ---------------------


def serve(
    app_routes: dict[str, Callable[..., Iterable[bytes]]], **kwargs: Any
) -> MetricsHttpServer:
    http = MetricsHttpServer(
        make_app(CollectorRegistry(), app_routes), "127.0.0.1", 0, Limits(**kwargs)
    )
    http.start()
    return http


def test_requests_beyond_the_thread_bound_wait_their_turn() -> None:
    threads, clients = 4, 12
    release = threading.Event()
    lock = threading.Lock()
    now = [0, 0]  # in the app now, most at once

    def blocking(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            now[0] += 1
            now[1] = max(now)
        release.wait(PATIENCE)
        with lock:
            now[0] -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done\n"]

    sent = threading.Semaphore(0)

    def client() -> bytes:
        with connect(http.port) as sock:
            sock.sendall(b"GET /block HTTP/1.1\r\n\r\n")
            sent.release()
            return read_all(sock)

    http = serve({"/block": blocking}, max_threads=threads)
    try:
        with ThreadPoolExecutor(clients) as pool:
            answers = [pool.submit(client) for _ in range(clients)]
            for _ in range(clients):
                assert sent.acquire(timeout=PATIENCE)
            assert wait_for(lambda: now[1] >= threads, PATIENCE)
            # every request is in; for a while, none beyond the bound gets a thread
            assert not wait_for(lambda: now[1] > threads, 1.0)
            release.set()
            statuses = [status_of(a.result(PATIENCE)) for a in answers]
        assert statuses == [200] * clients
        assert now[1] == threads
    finally:
        release.set()
        http.stop()


def test_a_client_that_stops_reading_frees_its_thread_after_the_timeout() -> None:
    size = 64 << 20  # far more than the socket buffers hold
    started = threading.Event()

    def huge(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"x" * size]

    http = serve({"/huge": huge}, max_threads=1, timeout=0.5)
    try:
        with connect(http.port) as reader:
            reader.sendall(b"GET /huge HTTP/1.1\r\n\r\n")  # and never reads
            assert started.wait(PATIENCE)  # it holds the only request thread
            status, _ = get(http.port, "/metrics")  # answered once the reader is dropped
            assert status == 200
            assert len(read_all(reader)) < size  # dropped: what was buffered, then EOF
    finally:
        http.stop()
