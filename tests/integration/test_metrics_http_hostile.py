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
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from devtools.onnx_models import mlp, write_model
from devtools.serverproc import ServerProcess, wait_for
from serving.http_server import (
    CONNECTION_TIMEOUT,
    MAX_PENDING,
    MAX_THREADS,
    MetricsHttpServer,
)
from serving.metrics_app import make_app

MODEL = "hostile"
SCRAPERS = 256
#: More stalled clients than the server keeps waiting and than it has threads.
STALLED = MAX_PENDING + MAX_THREADS + 50
FUZZ_EXAMPLES = 2000
#: Generous: how long a test waits for what the server should do at once, or
#: for the connection timeout to pass (no test asserts how long anything took).
PATIENCE = CONNECTION_TIMEOUT + 30.0


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


# --- raw HTTP ---------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset ends it too)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, request: bytes) -> bytes:
    with connect(port) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before all of it was sent; read the answer
        return read_all(sock)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/"), f"no status line in {answer[:200]!r}"
    return int(answer.split(b" ", 2)[1])


def get(port: int, path: str) -> tuple[int, bytes]:
    answer = exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
    head, _, body = answer.partition(b"\r\n\r\n")
    return status_of(head), body


def assert_metrics_correct(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log()
    status, body = get(server.metrics_port, "/metrics")
    text = body.decode()
    assert status == 200
    assert "# TYPE dlserve_requests_total counter" in text
    assert f'dlserve_model_ready{{model="{MODEL}",provider=' in text


def assert_no_traceback(server: ServerProcess, since: int = 0) -> None:
    """No traceback in the server's log after its first ``since`` characters."""
    log = server.log()[since:]
    at = log.find("Traceback")
    assert at < 0, log[at : at + 3000]


def disconnected(sock: socket.socket) -> bool:
    """True when the server closes ``sock`` (or resets it) before PATIENCE."""
    sock.settimeout(PATIENCE)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


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


#: What a stalled client sends before it stops: nothing, half a request line,
#: a request line and part of the headers.
STALLS = [b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: te"]


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


# --- fuzz ----------------------------------------------------------------------------

_printable = st.characters(min_codepoint=33, max_codepoint=126)
_latin1 = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")

METHODS = st.one_of(
    st.sampled_from(
        ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
         "PRI", "get", "GET\x00", "G\xe9T"]
    ),
    st.text(_printable, min_size=1, max_size=12),
)  # fmt: skip
SEGMENTS = st.one_of(
    st.sampled_from(
        ["metrics", "static", "api", "stats", "live.js", "live.css", "index.html", "..", ".",
         "", "%00", "%ff", "%2e%2e", "%2f", "%5c", "%c0%af", "%", "%zz", "~", ";", "\\",
         "metrics?name[]=dlserve_batch_size", "?", "#frag", "\x00", "\x7f", "\xff"]
    ),
    st.text(_printable, max_size=16),
    st.binary(min_size=1, max_size=12).map(lambda b: "".join(f"%{x:02x}" for x in b)),
    st.text(st.characters(min_codepoint=128, max_codepoint=255), min_size=1, max_size=6),
    st.integers(1000, 20_000).map(lambda n: "z" * n),
)  # fmt: skip
PATHS = st.tuples(
    st.sampled_from(["/", "/static/", "/api/", "//", "", "*", "http://x/", "/metrics/"]),
    st.lists(SEGMENTS, max_size=5),
).map(lambda t: t[0] + "/".join(t[1]))
VERSIONS = st.sampled_from(
    ["HTTP/1.1"] * 6 + ["HTTP/1.0"] * 3 + ["HTTP/2.0", "HTTP/0.9", "HTTP/1.1.1", "HTTP/x",
     "FOO/1.1", "HTTP/1.01", "HTTP/9999999999999999.1", ""]
)  # fmt: skip
HEADER_NAMES = st.one_of(
    st.sampled_from(
        ["Host", "Content-Length", "Content-Type", "Accept", "Accept-Encoding",
         "Transfer-Encoding", "Connection", "Expect", "Cookie", "Range", "Authorization",
         "X-Forwarded-For", "If-None-Match", "Upgrade", " Host", "Host ", ""]
    ),
    st.text(_printable, min_size=1, max_size=20),
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.sampled_from(
        ["gzip", "gzip, deflate, br", "identity;q=0", "*/*", "text/plain;version=0.0.4",
         "application/openmetrics-text; version=1.0.0", "application/openmetrics-text; version=x",
         "application/openmetrics-text;version=0.0.1;q=0.5,*/*;q=0.1", "-1", "0", "abc",
         "99999999999999999999999", "chunked", "chunked, gzip", "100-continue", "close",
         "keep-alive", "bytes=0-10", "websocket", "h2c", ""]
    ),
    st.text(_latin1, max_size=40),
    st.integers(1000, 10_000).map(lambda n: "v" * n),
)  # fmt: skip
HEADER_LINES = st.one_of(
    st.tuples(HEADER_NAMES, HEADER_VALUES).map(lambda nv: f"{nv[0]}: {nv[1]}"),
    st.text(_latin1, max_size=40),  # garbage, maybe without a colon
    st.just(" folded continuation"),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(request line, whole request) as bytes."""
    words = [draw(METHODS), draw(PATHS), draw(VERSIONS)]
    query = draw(st.one_of(st.just(""), st.text(_printable, max_size=30).map("?".__add__)))
    words[1] += query
    line = " ".join(w for w in words if w).encode("latin-1")
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    headers = draw(st.lists(HEADER_LINES, max_size=8))
    if draw(st.integers(0, 50)) == 0:
        headers *= 40  # sometimes too many
    body = draw(st.one_of(st.just(b""), st.binary(max_size=200)))
    head = eol.join([line, *(h.encode("latin-1") for h in headers)]) + eol + eol
    return line, head + body


def asks_http2_or_later(line: bytes) -> bool:
    """The request line names HTTP/2 or later: 505 is what it should get."""
    words = line.decode("latin-1").split()
    if len(words) < 3 or not words[-1].startswith("HTTP/"):
        return False
    major = words[-1][len("HTTP/") :].split(".")[0]
    return major.isdigit() and int(major) >= 2


def assert_not_a_server_error(answer: bytes, line: bytes) -> None:
    shown = f"{line[:200]!r} -> {answer[:300]!r}"
    if answer.startswith(b"HTTP/"):
        status = status_of(answer)
        assert 200 <= status < 500 or (status == 505 and asks_http2_or_later(line)), shown
    elif not answer:
        # http.server closes without a word on a blank request line, and
        # answers HEAD in HTTP/0.9 (no status line, no headers, no body) with
        # nothing at all.
        words = line.decode("latin-1").split()
        head_09 = words[:1] == ["HEAD"] and words[2:] in ([], ["HTTP/0.9"])
        assert words == [] or head_09, shown
    else:  # http.server's answer without a status line (HTTP/0.9 style): the body alone
        if b"Error code: 505" in answer and asks_http2_or_later(line):
            return
        assert b"Error code: 5" not in answer and b"server error" not in answer, shown


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
    http = MetricsHttpServer(make_app(CollectorRegistry(), app_routes), "127.0.0.1", 0, **kwargs)
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
