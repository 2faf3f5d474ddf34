"""The credentials named in the settings, read and checked at start.

``load_credentials(settings)`` reads the bearer token (``--auth-token-file``) and the TLS
files (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``) and builds the
gRPC server credentials. Every file is checked before any model loads, and
a file that cannot work fails with ``CredentialError``: one line naming the
flag, the file and what is wrong with it. (Handed unchecked to gRPC, a
non-PEM file surfaced only later as a vague "Failed to bind", and a token no
client can send was accepted.)

The PEM checks use the standard ``ssl`` module (OpenSSL): it parses the
certificates, and loading the certificate chain with its key also proves
that the key belongs to the certificate. That needs no dependency beyond the
standard library in the serving install.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving.settings import ServingSettings

#: What a token may hold: printable ASCII without spaces, the characters a
#: client can put in an ``authorization`` metadata value after "Bearer ".
_TOKEN_CHARS = frozenset(range(0x21, 0x7F))


class CredentialError(Exception):
    """A credential file that cannot be used; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class Credentials:
    #: The bearer token clients must send; None when auth is off.
    token: str | None
    #: TLS credentials for the gRPC port; None to serve plaintext.
    tls: grpc.ServerCredentials | None


def load_credentials(settings: ServingSettings) -> Credentials:
    token = read_token(settings.auth_token_file) if settings.auth_token_file else None
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    return Credentials(token, tls)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"cannot read {flag} {path}: {exc.strerror}") from exc


def read_token(path: Path) -> str:
    """The token in ``path``: its one line, without surrounding whitespace."""
    flag = "--auth-token-file"
    token = _read(path, flag).strip()
    if not token:
        raise CredentialError(f"{flag} {path} is empty")
    for i, byte in enumerate(token):
        if byte in _TOKEN_CHARS:
            continue
        if byte in b"\r\n":
            raise CredentialError(
                f"{flag} {path} holds more than one line; it must hold just the token"
            )
        raise CredentialError(
            f"{flag} {path}: the token has a space, control or non-ASCII character at "
            f"position {i + 1}; clients can only send printable ASCII without spaces"
        )
    return token.decode("ascii")


def _certificates(data: bytes, path: Path, flag: str, what: str) -> None:
    """Refuse ``data`` unless it holds PEM certificates that parse."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, ssl.SSLError) as exc:  # ValueError: empty
        raise CredentialError(f"{flag} {path} is not a PEM {what}") from exc


def _key(data: bytes, key: Path, cert: Path) -> None:
    """Refuse a key that is not PEM, is encrypted, or does not belong to ``cert``."""
    flag = "--tls-key"
    if b"PRIVATE KEY-----" not in data:
        raise CredentialError(f"{flag} {key} is not a PEM private key")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        raise CredentialError(f"{flag} {key} is encrypted: gRPC needs an unencrypted PEM key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback, so that OpenSSL never prompts on the terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CredentialError(
                f"{flag} {key} is not the private key of --tls-cert {cert}"
            ) from exc
        raise CredentialError(f"{flag} {key} is not a PEM private key") from exc
    except OSError as exc:  # the file went away between the two reads
        raise CredentialError(f"cannot read {flag} {key}: {exc.strerror}") from exc


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS credentials for ``cert`` and ``key``; with ``client_ca``, clients
    must present a certificate it signed (mutual TLS)."""
    cert_pem = _read(cert, "--tls-cert")
    key_pem = _read(key, "--tls-key")
    ca_pem = _read(client_ca, "--tls-client-ca") if client_ca is not None else None
    _certificates(cert_pem, cert, "--tls-cert", "certificate")
    _key(key_pem, key, cert)
    if ca_pem is not None and client_ca is not None:
        _certificates(ca_pem, client_ca, "--tls-client-ca", "CA certificate bundle")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )
