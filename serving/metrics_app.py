"""The WSGI app of the metrics port: ``/metrics`` (Prometheus text format of
the server's registry), ``/`` and ``/static/<file>`` (the live page, files
in ``serving/static``) and ``/api/stats`` (``serving.live_stats``)."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, make_wsgi_app

from serving.live_stats import LiveStats

STATIC_DIR = Path(__file__).parent / "static"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _static_files() -> dict[str, Path]:
    """The live page's files by name: the only names a request can reach."""
    if not STATIC_DIR.is_dir():
        return {}
    return {file.name: file for file in STATIC_DIR.iterdir() if file.is_file()}


def _static(file: Path, start_response: StartResponse) -> Iterable[bytes]:
    ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype.endswith(("javascript", "json", "svg+xml")):
        ctype += "; charset=utf-8"
    body = file.read_bytes()
    start_response("200 OK", [
        ("Content-Type", ctype),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache"),
    ])  # fmt: skip
    return [body]


def _not_found(start_response: StartResponse) -> Iterable[bytes]:
    body = b"not found\n"
    start_response("404 Not Found", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ])  # fmt: skip
    return [body]


def make_app(registry: CollectorRegistry, routes: dict[str, WsgiApp] | None = None) -> WsgiApp:
    metrics_app: WsgiApp = make_wsgi_app(registry)
    live = LiveStats(registry)
    extra: dict[str, WsgiApp] = {"/api/stats": live.wsgi, **(routes or {})}
    static = _static_files()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path in extra:
            return extra[path](environ, start_response)
        # A name is looked up in the table, never on the disk: no "..", NUL,
        # over-long or undecodable name reaches the file system.
        name = "index.html" if path == "/" else path.lstrip("/").removeprefix("static/")
        file = static.get(name)
        if file is None:
            return _not_found(start_response)
        return _static(file, start_response)

    return app
