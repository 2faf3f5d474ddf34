"""A small KServe V2 REST client for ``dlserve predict`` and ``dlserve bench``:
the standard library (``http.client``, asyncio streams) and orjson, no
tritonclient. Requests go out with the binary tensor data extension (the
JSON header, then raw input bytes), as tritonclient.http sends them.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from dlserve.errors import ClientError


def resolve(url: str, protocol: str | None) -> tuple[str, str, bool]:
    """(protocol, HOST:PORT, tls) from --url and --protocol: an http:// or
    https:// URL means REST; otherwise --protocol, gRPC by default."""
    for scheme, tls in (("http://", False), ("https://", True)):
        if url.startswith(scheme):
            if protocol == "grpc":
                raise ClientError(f"--url {url} is an HTTP URL but --protocol is grpc")
            return "http", url[len(scheme) :].rstrip("/"), tls
    return protocol or "grpc", url, False


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClientError(f"--url must be HOST:PORT (or http://HOST:PORT), got {address!r}")
    return host.strip("[]"), int(port)


def model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def infer_body(
    inputs: list[tuple[str, str, np.ndarray]], outputs: list[dict[str, Any]] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer body for ``(name, datatype, array)`` inputs."""
    header: dict[str, Any] = {"inputs": []}
    raw = []
    for name, datatype, array in inputs:
        data = np.ascontiguousarray(array).tobytes()
        header["inputs"].append({"name": name, "datatype": datatype, "shape": list(array.shape),
                                 "parameters": {"binary_data_size": len(data)}})  # fmt: skip
        raw.append(data)
    if outputs:
        header["outputs"] = outputs
    head = orjson.dumps(header)
    headers = {"Content-Type": "application/octet-stream",
               "Inference-Header-Content-Length": str(len(head))}  # fmt: skip
    return b"".join((head, *raw)), headers


class RestClient:
    """Blocking calls over one keep-alive connection (``dlserve predict``)."""

    def __init__(
        self, address: str, *, tls: bool, tls_ca: Path | None, token: str | None, timeout: float
    ) -> None:
        host, port = _host_port(address)
        self.address = address
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        if tls or tls_ca is not None:
            context = ssl.create_default_context(cafile=str(tls_ca) if tls_ca else None)
            self._conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        try:
            self._conn.request(
                method, path, body=body, headers={**self._headers, **(headers or {})}
            )
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"cannot reach the server at {self.address}: {exc}") from exc
        try:
            decoded = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            decoded = None
        if response.status != 200:
            message = (
                decoded.get("error")
                if isinstance(decoded, dict)
                else data[:200].decode("utf-8", "replace")
            )
            raise ClientError(f"server at {self.address} answered {response.status}: {message}")
        return decoded

    def close(self) -> None:
        self._conn.close()


class AsyncRestConnection:
    """One keep-alive connection on asyncio streams (``dlserve bench``): send
    a prepared request, read the status and skip the body."""

    def __init__(self, address: str) -> None:
        self.host, self.port = _host_port(address)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> int:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self._reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def raw_request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """An HTTP/1.1 request as bytes, to be sent again and again."""
    lines = [f"{method} {path} HTTP/1.1", "Host: dlserve", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
