"""The bearer-token rule, one for both transports.

An ``authorization`` value (gRPC metadata or HTTP header) carries the token
when it reads ``Bearer`` 1*SP ``token`` (RFC 6750 section 2.1, RFC 7235's
auth-scheme): the scheme compares case-insensitively, one or more spaces
(not tabs) separate it from the token, and the token must be exactly the
server's. The comparison runs in constant time on SHA-256 digests, so that
neither a wrong prefix nor a wrong length shows in the timing, and a wrong
scheme costs as much as a wrong token.

``serving.grpc_api.auth`` and ``serving.http_api.routes`` call
``token_matches``; neither holds a rule of its own. This module imports
nothing from serving and no transport.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["expected_digest", "token_matches"]

_SCHEME = b"bearer"


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def expected_digest(token: str) -> bytes:
    """What ``token_matches`` compares against: the digest of the server's token."""
    if not token:
        raise ValueError("the bearer token must not be empty")
    return _digest(token.encode())


def token_matches(header: str | bytes, expected: bytes) -> bool:
    """Whether the ``authorization`` value ``header`` carries the token whose
    digest is ``expected`` (from ``expected_digest``)."""
    value = header.encode("utf-8", "replace") if isinstance(header, str) else header
    scheme, _, credential = value.partition(b" ")
    credential = credential.lstrip(b" ")
    # Always hash and compare, whatever the scheme, so a wrong scheme takes
    # as long as a wrong token.
    match = hmac.compare_digest(_digest(credential), expected)
    return match and scheme.lower() == _SCHEME
