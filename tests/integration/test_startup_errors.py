"""``dlserve serve`` refuses settings and credential files that cannot work,
as a user runs it: a real process that ends with exactly one line on stderr,
a non-zero exit and no traceback, before any model loads.

Covered: a --max-message-bytes gRPC cannot take (a C int), TLS files that
are not PEM (or a key that is encrypted or belongs to another certificate),
and token files no client could send (two lines, spaces, control or
non-ASCII characters).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from devtools.onnx_models import mlp, write_model
from devtools.serverproc import ServerProcess, run_cli
from tests.pki import issue, make_ca
from tests.support import free_port


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("startup") / "models"
    write_model(repo, "model", model=mlp(seed=1))
    return repo


def serve(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "serve", "--model-repository", str(repo), "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
        *args,
        timeout=60,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The process failed with exactly one non-empty stderr line holding every fragment."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    (line,) = lines
    assert line.startswith("dlserve serve: error:"), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# --- --max-message-bytes -----------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**31), str(2**40)])
def test_max_message_bytes_over_a_c_int(repo: Path, value: str) -> None:
    result = serve(repo, "--max-message-bytes", value)
    one_line_error(result, "max-message-bytes", str(2**31 - 1))


def test_max_message_bytes_from_the_environment(repo: Path) -> None:
    process = ServerProcess(repo, env={"SERVING_MAX_MESSAGE_BYTES": str(2**31)})
    result = subprocess.run(
        process.command(), capture_output=True, text=True, timeout=60, env=process.env
    )
    one_line_error(result, "max-message-bytes", str(2**31 - 1))


def test_max_message_bytes_at_the_c_int_limit_serves(repo: Path) -> None:
    with ServerProcess(repo, "--http-port", "0", "--max-message-bytes", str(2**31 - 1)) as server:
        assert server.proc is not None and server.proc.poll() is None


# --- TLS files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good and bad TLS files by name."""
    ca, ca_key, ca_cert = make_ca("startup test CA")
    server = issue(ca_key, ca_cert, "dlserve", server=True)
    other = issue(ca_key, ca_cert, "someone else", server=True)
    key = serialization.load_pem_private_key(server.key, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    der_cert = x509.load_pem_x509_certificate(server.cert).public_bytes(serialization.Encoding.DER)
    broken = server.cert.replace(b"\n", b"\n!", 3)  # markers right, base64 broken
    files = {
        "ca.pem": ca.cert, "server.pem": server.cert, "server.key": server.key,
        "other.key": other.key, "encrypted.key": encrypted, "cert.der": der_cert,
        "broken.pem": broken, "text.txt": b"this is not a certificate\n", "empty": b"",
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("pem")
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


BAD_TLS = {
    "cert is text": (("text.txt", "server.key", None), "--tls-cert", "is not a PEM certificate"),
    "cert is DER": (("cert.der", "server.key", None), "--tls-cert", "is not a PEM certificate"),
    "cert is empty": (("empty", "server.key", None), "--tls-cert", "is not a PEM certificate"),
    "cert base64 broken": (
        ("broken.pem", "server.key", None), "--tls-cert", "is not a PEM certificate",
    ),
    "cert is a key": (("server.key", "server.key", None), "--tls-cert", "not a PEM certificate"),
    "key is text": (("server.pem", "text.txt", None), "--tls-key", "is not a PEM private key"),
    "key is a cert": (("server.pem", "server.pem", None), "--tls-key", "not a PEM private key"),
    "key of another cert": (
        ("server.pem", "other.key", None), "--tls-key", "is not the private key of --tls-cert",
    ),
    "key encrypted": (("server.pem", "encrypted.key", None), "--tls-key", "is encrypted"),
    "client CA is text": (
        ("server.pem", "server.key", "text.txt"), "--tls-client-ca", "is not a PEM",
    ),
    "client CA is empty": (
        ("server.pem", "server.key", "empty"), "--tls-client-ca", "is not a PEM",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_TLS))
def test_bad_tls_files_are_refused_at_start(repo: Path, pem: dict[str, Path], case: str) -> None:
    (cert, key, ca), flag, problem = BAD_TLS[case]
    args = ["--tls-cert", str(pem[cert]), "--tls-key", str(pem[key])]
    if ca is not None:
        args += ["--tls-client-ca", str(pem[ca])]
    bad = {"--tls-cert": cert, "--tls-key": key, "--tls-client-ca": ca}[flag]
    line = one_line_error(serve(repo, *args), f"{flag} {pem[str(bad)]}", problem)
    assert "bind" not in line.lower()


def test_missing_tls_file_is_refused_at_start(repo: Path, pem: dict[str, Path]) -> None:
    missing = pem["server.pem"].parent / "nope.pem"
    result = serve(repo, "--tls-cert", str(missing), "--tls-key", str(pem["server.key"]))
    one_line_error(result, "cannot read --tls-cert", str(missing))


def test_good_tls_files_serve(repo: Path, pem: dict[str, Path]) -> None:
    with ServerProcess(
        repo, "--http-port", "0", "--tls-cert", str(pem["server.pem"]),
        "--tls-key", str(pem["server.key"]), tls_ca=pem["ca.pem"].read_bytes(),
    ) as server:  # fmt: skip
        assert server.proc is not None and server.proc.poll() is None


# --- token files -------------------------------------------------------------------

BAD_TOKENS = {
    "two lines": (b"tok-one\ntok-two\n", "more than one line"),
    "CRLF two lines": (b"tok-one\r\ntok-two\r\n", "more than one line"),
    "inner space": (b"tok one\n", "position 4"),
    "inner tab": (b"tok\tone", "position 4"),
    "control character": (b"tok\x01one", "position 4"),
    "NUL": (b"tok\x00one", "position 4"),
    "non-ASCII": ("tök".encode(), "position 2"),
    "UTF-8 BOM": (b"\xef\xbb\xbftok", "position 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_unsendable_token_is_refused_at_start(repo: Path, tmp_path: Path, case: str) -> None:
    content, fragment = BAD_TOKENS[case]
    token_file = tmp_path / "token"
    token_file.write_bytes(content)
    result = serve(repo, "--auth-token-file", str(token_file))
    one_line_error(result, f"--auth-token-file {token_file}", fragment)


def test_missing_token_file_is_refused_at_start(repo: Path, tmp_path: Path) -> None:
    result = serve(repo, "--auth-token-file", str(tmp_path / "absent"))
    one_line_error(result, "cannot read --auth-token-file", "absent")
