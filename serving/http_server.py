"""The metrics HTTP endpoint: ``/metrics`` (Prometheus text format) and the
live page at ``/`` with its static files, served from a thread so a scrape
never waits on the event loop.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def make_app(registry: CollectorRegistry, routes: dict[str, WsgiApp] | None = None) -> WsgiApp:
    metrics_app = make_wsgi_app(registry)
    extra = routes or {}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path in extra:
            return extra[path](environ, start_response)
        if path == "/":
            path = "/index.html"
        name = path.lstrip("/")
        if name.startswith("static/"):
            name = name[len("static/") :]
        file = (STATIC_DIR / name).resolve()
        if "/" not in name and file.parent == STATIC_DIR.resolve() and file.is_file():
            ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            body = file.read_bytes()
            start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


class MetricsHttpServer:
    def __init__(self, app: WsgiApp, host: str, port: int) -> None:
        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
