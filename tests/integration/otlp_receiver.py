"""A real OTLP/HTTP trace receiver for tests: ``POST /v1/traces`` bodies
decoded with opentelemetry-proto's ``ExportTraceServiceRequest``, the spans
kept in arrival order.

with OtlpReceiver() as receiver:
    ... --trace-config opentelemetry,url={receiver.url} ...
    spans = receiver.wait_for(lambda spans: len(spans) >= 5)
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

#: Upper bound on waiting for spans; a healthy export arrives within the
#: processor's schedule delay (the tests set 50 ms).
WAIT_SECS = 30.0


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind is not None else None


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver._take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _take(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    spans.append(Span(
                        s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                        s.kind, s.start_time_unix_nano, s.end_time_unix_nano,
                        {a.key: _value(a.value) for a in s.attributes},
                        [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        s.status.code, s.status.message, resource,
                    ))  # fmt: skip
        with self._lock:
            self.spans.extend(spans)
            self.requests += 1

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()

    def wait_for(
        self, done: Callable[[list[Span]], bool], timeout: float = WAIT_SECS
    ) -> list[Span]:
        """The spans once ``done(spans)`` holds (raises after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans still not as expected after {timeout}s: {spans}")
            time.sleep(0.02)

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def traces(spans: list[Span]) -> dict[str, list[Span]]:
    """Spans grouped by trace id."""
    out: dict[str, list[Span]] = {}
    for span in spans:
        out.setdefault(span.trace_id, []).append(span)
    return out


def roots(spans: list[Span], model: str | None = None) -> list[Span]:
    """The request spans ("infer"), of one model if given."""
    return [
        s for s in spans
        if s.name == "infer" and (model is None or s.attributes.get("dlserve.model") == model)
    ]  # fmt: skip


class StallingCollector:
    """An OTLP/HTTP endpoint that holds every export unanswered until
    ``release()``, then refuses it (400, which the exporter does not retry)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.arrived = threading.Event()
        self.held = 0
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.held += 1
                collector.arrived.set()
                collector.released.wait(120)
                self.send_error(400, "refused by the test")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> "StallingCollector":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
