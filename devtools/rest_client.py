"""A tiny HTTP client for the REST port (http.client, keep-alive), and the
check that an answer is a JSON error; shared by the REST tests and
``scripts/fuzz_ports.py``."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any


class Http:
    """One keep-alive connection to ``host:port``; reconnects when the server closed it."""

    def __init__(self, url: str, context: ssl.SSLContext | None = None, timeout: float = 30):
        host, port = url.rsplit(":", 1)
        if context is None:
            self.conn: http.client.HTTPConnection = http.client.HTTPConnection(
                host, int(port), timeout=timeout
            )
        else:
            self.conn = http.client.HTTPSConnection(
                host, int(port), timeout=timeout, context=context
            )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):
            self.conn.close()
            self.conn.request(method, path, body=body, headers=headers or {})
            response = self.conn.getresponse()
        data = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
        if found.get("connection", "").lower() == "close":
            self.conn.close()
        return response.status, found, data

    def json(self, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        raw = None if body is None else json.dumps(body)
        status, _, data = self.request(method, path, raw, headers)
        return status, json.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


def error_of(status: int, headers: dict[str, str], body: bytes) -> str:
    """The message of a JSON error answer (fails if it is not one)."""
    assert headers.get("content-type") == "application/json", (status, headers, body[:200])
    decoded = json.loads(body)
    assert isinstance(decoded, dict) and set(decoded) == {"error"}, decoded
    assert isinstance(decoded["error"], str) and decoded["error"], decoded
    return str(decoded["error"])
