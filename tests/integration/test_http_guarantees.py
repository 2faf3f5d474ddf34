"""The REST port keeps the gRPC port's guarantees: the bearer token (health
open), TLS and mutual TLS on the same flags, 413 over --max-message-bytes
(from Content-Length before the body is read, and while it streams) with
the server still correct, a graceful drain on SIGTERM, and hypothesis'
malformed bodies, headers and paths answered with a 4xx JSON error (the
generators and checks are devtools/fuzz_rest.py's, which
``scripts/fuzz_ports.py --target rest`` runs for longer)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings

from devtools import fuzz_rest as fr
from devtools.fuzz_metrics import read_all
from devtools.serverproc import ServerProcess, wait_for
from tests.integration.helpers import build_repo, model_file, reference
from tests.integration.http_helpers import Http, error_of
from tests.pki import issue, make_ca

X = fr.X
BODY = fr.BODY
INFER = fr.INFER


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("http-guarantees"))


def assert_correct(api: Http, repo: Path, **headers: str) -> None:
    status, _, data = api.request("POST", INFER, BODY, headers)
    assert status == 200, data
    logits = next(o for o in json.loads(data)["outputs"] if o["name"] == "logits")
    want = reference(model_file(repo, "classifier"), np.asarray(X, np.float32))["logits"]
    np.testing.assert_allclose(logits["data"], want.reshape(-1), atol=1e-6)


# --- token --------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text("s3cret-token\n")
    with ServerProcess(repo, "--auth-token-file", str(token)) as proc:
        yield proc


@pytest.mark.parametrize(
    "path",
    ["/v2", "/v2/models/classifier", "/v2/models/classifier/config", "/v2/models/stats",
     "/v2/trace/setting", "/v2/models/classifier/trace/setting", "/v2/logging"],
)  # fmt: skip
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic s3cret-token", "Bearer"])
def test_token_required(auth_server: ServerProcess, path: str, auth: str | None) -> None:
    api = Http(auth_server.http_url)
    status, headers, data = api.request("GET", path, None, {"Authorization": auth} if auth else {})
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert "token" in error_of(status, headers, data)
    status, headers, data = api.request("POST", INFER, BODY)
    assert status == 401


def test_token_accepted_and_health_open(auth_server: ServerProcess, repo: Path) -> None:
    api = Http(auth_server.http_url)
    assert api.request("GET", "/v2/health/live")[0] == 200
    assert api.request("GET", "/v2/health/ready")[0] == 200
    for value in ("Bearer s3cret-token", "bearer  s3cret-token"):
        assert api.request("GET", "/v2", None, {"Authorization": value})[0] == 200
        assert_correct(api, repo, Authorization=value)
    client = httpclient.InferenceServerClient(auth_server.http_url)
    headers = {"Authorization": "Bearer s3cret-token"}
    assert client.get_model_metadata("classifier", headers=headers)["name"] == "classifier"
    client.close()


# --- TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca, ca_key, ca_cert = make_ca("dlserve test CA")
    server = issue(ca_key, ca_cert, "dlserve", server=True)
    client = issue(ca_key, ca_cert, "a client", server=False)
    folder = tmp_path_factory.mktemp("http-pki")
    files = {"ca.pem": ca.cert, "server.pem": server.cert, "server.key": server.key,
             "client.pem": client.cert, "client.key": client.key}  # fmt: skip
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def _context(pki: dict[str, Path], client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
    if client_cert:
        context.load_cert_chain(str(pki["client.pem"]), str(pki["client.key"]))
    return context


def _tls_server(repo: Path, pki: dict[str, Path], *extra: str) -> ServerProcess:
    ca = pki["ca.pem"].read_bytes()
    return ServerProcess(
        repo, "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]), *extra,
        tls_ca=ca, wait_ready=False,
    )  # fmt: skip


def _wait_https(server: ServerProcess, context: ssl.SSLContext) -> Http:
    from devtools.serverproc import wait_for

    api = Http(server.http_url, context)

    def up() -> bool:
        try:
            return api.request("GET", "/v2/health/ready")[0] == 200
        except OSError:
            api.close()
            return False

    assert wait_for(up, 60), server.log()
    return api


def test_tls(repo: Path, pki: dict[str, Path]) -> None:
    with _tls_server(repo, pki) as server:
        api = _wait_https(server, _context(pki, client_cert=False))
        assert_correct(api, repo)
        # A plain-HTTP request is no TLS ClientHello: the server closes the
        # connection without an answer (http.client's RemoteDisconnected, or
        # a reset: both ConnectionResetError), and TLS clients go on as before.
        plain = Http(server.http_url)
        with pytest.raises(ConnectionResetError):
            plain.request("GET", "/v2/health/live")
        plain.close()
        assert api.request("GET", "/v2/health/live")[0] == 200


def test_mutual_tls(repo: Path, pki: dict[str, Path]) -> None:
    with _tls_server(repo, pki, "--tls-client-ca", str(pki["ca.pem"])) as server:
        api = _wait_https(server, _context(pki, client_cert=True))
        assert_correct(api, repo)
        anonymous = Http(server.http_url, _context(pki, client_cert=False))
        with pytest.raises((ssl.SSLError, OSError)):
            anonymous.request("GET", "/v2/health/live")


# --- limits -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(repo, "--max-message-bytes", "8192") as proc:
        yield proc


def _raw(url: str, head: bytes, body: bytes = b"") -> bytes:
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        return read_all(sock)


def test_413_before_the_body_and_while_streaming(small_server: ServerProcess, repo: Path) -> None:
    # Content-Length says too much: answered without sending a byte of body.
    answer = _raw(
        small_server.http_url,
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"error"' in answer and b"max-message-bytes" in answer
    # No Content-Length (chunked): refused once the streamed body passes the limit.
    chunk = b"x" * 4096
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
    answer = _raw(
        small_server.http_url,
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode(),
        body,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # A gzip body that inflates past the limit.
    import gzip

    api = Http(small_server.http_url)
    bomb = gzip.compress(b" " * 100_000)
    status, headers, data = api.request("POST", INFER, bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "max-message-bytes" in error_of(status, headers, data)
    assert_correct(Http(small_server.http_url), repo)


# --- drain --------------------------------------------------------------------


def test_drain_answers_requests_in_flight(repo: Path) -> None:
    """``delayed`` holds requests up to 0.5 s: SIGTERM arrives while they
    wait; every one is answered, the exit code is 0."""
    server = ServerProcess(repo, "--exit-timeout-secs", "20").start()
    try:
        results: list[int] = []
        body = BODY
        started = threading.Barrier(5)

        def send() -> None:
            api = Http(server.http_url)
            started.wait()
            results.append(api.request("POST", "/v2/models/delayed/infer", body)[0])

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        started.wait()
        import time

        time.sleep(0.15)  # the requests reach the batcher (not a timing assertion)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        # "New" requests are the ones sent once the server says it drains.
        assert wait_for(lambda: "draining" in server.log(), 30), server.log()
        refused = _refused_while_draining(server)
        for t in threads:
            t.join(30)
        assert server.stop() == 0
    finally:
        server.kill()
    assert results == [200] * 4, server.log()
    assert refused  # at least one new request arrived during the drain


def _refused_while_draining(server: ServerProcess) -> list[tuple[int, str]]:
    """New requests until the listener closes: each one 503 with Connection: close."""
    answers = []
    while True:
        api = Http(server.http_url, timeout=10)
        try:
            status, headers, _ = api.request("POST", "/v2/models/delayed/infer", BODY)
        except OSError:
            return answers  # the listener is closed
        finally:
            api.close()
        answers.append((status, headers.get("connection", "")))
        assert answers[-1] == (503, "close"), answers


# --- fuzz ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_api(small_server: ServerProcess) -> Iterator[Http]:
    api = Http(small_server.http_url)
    yield api
    api.close()


FUZZ = settings(
    max_examples=700, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip


@FUZZ
@given(body=fr.bodies)
def test_fuzz_bodies(fuzz_api: Http, body: bytes) -> None:
    fr.check_body(fuzz_api, body)


@FUZZ
@given(body=fr.bodies, length=fr.lengths, encoding=fr.encodings, accept=fr.accepts)
def test_fuzz_headers(fuzz_api: Http, body: bytes, length: str, encoding: str, accept: str) -> None:
    fr.check_headers(fuzz_api, body, length, encoding, accept)


@FUZZ
@given(parts=fr.path_parts, method=fr.methods)
def test_fuzz_paths(fuzz_api: Http, parts: list[str], method: str) -> None:
    fr.check_path(fuzz_api, parts, method)


def test_server_still_correct_after_the_fuzz(small_server: ServerProcess, repo: Path) -> None:
    assert_correct(Http(small_server.http_url), repo)
    status: Any = Http(small_server.http_url).request("GET", "/v2/health/ready")[0]
    assert status == 200


# --- workers --------------------------------------------------------------------


def test_workers_share_the_http_port(repo: Path) -> None:
    with ServerProcess(repo, "--workers", "2") as server:
        for _ in range(8):  # a new connection each time: the kernel spreads them
            api = Http(server.http_url)
            assert_correct(api, repo)
            api.close()
        line = f"http 127.0.0.1:{server.http_port}"
        # Each worker logs its start line once it serves; the second may
        # still be loading when the first answers.
        assert wait_for(lambda: server.log().count(line) == 2, 60), server.log()


# -- slow and half-open clients ----------------------------------------------------------


def _port(server: ServerProcess) -> tuple[str, int]:
    host, port = server.http_url.rsplit(":", 1)
    return host, int(port)


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``within`` s."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_heads_and_bodies_are_cut_and_big_heads_refused(repo: Path) -> None:
    """A head or a body that trickles in is closed after its timeout (uvicorn
    bounds neither); a head over 16 KiB gets 431 with a JSON error; the server
    answers others meanwhile."""
    env = {"SERVING_HTTP_HEAD_TIMEOUT_SECS": "1", "SERVING_HTTP_BODY_TIMEOUT_SECS": "1"}
    with ServerProcess(repo, env=env) as server:
        address = _port(server)
        silent = socket.create_connection(address)  # connects, sends nothing
        half = socket.create_connection(address)
        half.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # no end of head
        slow_body = socket.create_connection(address)
        slow_body.sendall(
            b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
        )
        api = Http(server.http_url)
        assert_correct(api, repo)  # others are served meanwhile
        for sock in (silent, half, slow_body):
            assert _closed_by_server(sock, 30)
            sock.close()
        big = socket.create_connection(address)
        big.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        big.settimeout(30)
        answer = b""
        while chunk := big.recv(65536):
            answer += chunk
        big.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), head
        assert "16384 bytes" in json.loads(body)["error"]
        assert_correct(api, repo)
        api.close()
