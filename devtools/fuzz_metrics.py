"""Hostile clients of the metrics/live-page port (serving/http_server.py) for
Hypothesis, over raw sockets, and the checks on what the server answers:
``tests/integration/test_metrics_http_hostile.py`` runs them briefly,
``scripts/fuzz_ports.py --target metrics`` for long.

The contract: no answer is a 5xx (505 only to a request line that names
HTTP/2 or later), a stalled client is dropped after the connection timeout,
and /metrics is correct afterwards with no traceback in the server log.
"""

from __future__ import annotations

import socket

from hypothesis import strategies as st

from devtools.serverproc import ServerProcess
from serving.http_server import CONNECTION_TIMEOUT

#: Generous: how long a check waits for what the server should do at once, or
#: for the connection timeout to pass (nothing asserts how long anything took).
PATIENCE = CONNECTION_TIMEOUT + 30.0
#: What a stalled client sends before it stops: nothing, half a request line,
#: a request line and part of the headers.
STALLS = [b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: te"]


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


def assert_metrics_correct(server: ServerProcess, model: str) -> None:
    """The server runs, and /metrics is whole and names ``model`` ready or not."""
    assert server.proc is not None and server.proc.poll() is None, server.log()
    status, body = get(server.metrics_port, "/metrics")
    text = body.decode()
    assert status == 200
    assert "# TYPE dlserve_requests_total counter" in text
    assert f'dlserve_model_ready{{model="{model}",provider=' in text


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
