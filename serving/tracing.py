"""Request traces: which requests are traced (``trace_settings``), what a
traced request records on its way, and its spans (``otlp``: OpenTelemetry
SDK, OTLP/HTTP, batch processor).

Off (every level OFF, or the count spent), the request path pays one check
of ``Tracing.on`` per request at its transport, and nothing else: no span,
no clock read, no SDK loaded.

A sampled request gets a ``RequestTrace``: its root span starts at once
(so its trace id is known for the latency histogram's exemplar) as a child
of the client's W3C ``traceparent`` when there is one; the transport, the
service and the batcher's result fill in timestamps; when the answer is
encoded (or the request failed) the trace is queued, and the children are
written on the next turn of the event loop, from the recorded times:

    infer (SERVER; model, version, rows, batch rows, status code, transport)
      queue                 waiting in the model's queue
      batch                 the batch it ran in (links: the other traced
        compute             requests of that batch), onnxruntime's run
      encode                shaping and encoding the response

Requests of one batch are answered in one turn of the loop, so the traced
requests of a batch are written together and each one's ``batch`` span
links the others'. Ended spans go to the processor's bounded queue; what
would overflow it is dropped before it is written, and what an export
fails to deliver is dropped by the exporter: both counted in
``dlserve_trace_spans_dropped_total{reason}``. Nothing on the request path
waits for the collector.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter

from dlserve import __version__
from serving.errors import ServingError, code_name
from serving.trace_settings import TraceConfig, TraceSettings

if TYPE_CHECKING:
    from serving.batch_jobs import BatchResult
    from serving.otlp import Pipeline

logger = logging.getLogger(__name__)
_now = time.perf_counter
#: Seconds a stopping server waits for the last exports.
SHUTDOWN_SECS = 2.0
#: Spans of a traced request that reached its batch (infer, queue, batch, compute, encode).
FULL_TRACE = 5


class RequestTrace:
    """What one traced request recorded: perf_counter seconds and outcome."""

    __slots__ = (
        "_owner",
        "root",
        "trace_id",
        "model",
        "transport",
        "started",
        "enqueued",
        "version",
        "rows",
        "result",
        "post_start",
        "ended",
        "code",
        "message",
    )

    def __init__(
        self, owner: "Tracing", root: Any, model: str, transport: str, started: float
    ) -> None:
        self._owner = owner
        self.root = root
        self.trace_id = format(root.get_span_context().trace_id, "032x")
        self.model = model
        self.transport = transport
        self.started = started
        self.enqueued = started
        self.version = ""
        self.rows = 0
        self.result: BatchResult | None = None
        self.post_start = 0.0
        self.ended = 0.0
        self.code = "OK"
        self.message = ""

    def computed(self, version: str, rows: int, result: "BatchResult", post_start: float) -> None:
        """The service has the batch's result and starts shaping the answer."""
        self.version = version
        self.rows = rows
        self.result = result
        self.post_start = post_start

    def end(self) -> None:
        """The answer is encoded: the trace is complete."""
        if not self.ended:
            self.ended = _now()
            self._owner._queue(self)

    def fail(self, exc: BaseException, version: str = "") -> None:
        """The request failed with ``exc`` (its status code is recorded)."""
        if not self.ended:
            self.code = code_name(exc)
            self.message = exc.message if isinstance(exc, ServingError) else type(exc).__name__
            self.version = self.version or version
            self.result = None
            self.end()


class Tracing:
    """Trace settings, sampling and span output of one server."""

    def __init__(
        self,
        config: TraceConfig,
        known: Callable[[str], object | None] = lambda name: None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = TraceSettings(config, known)
        #: The request path's one check: False when nothing can be traced.
        self.on = self.settings.on
        self._export = config.export
        self._pipeline: Pipeline | None = None
        self._ended: list[RequestTrace] = []
        self._flush_handle: asyncio.Handle | None = None
        self._offset_ns = time.time_ns() - time.perf_counter_ns()
        self._in_queue = 0  # spans handed to the processor (event loop thread)
        self._out = [0]  # spans the exporter finished with (exporter thread)
        self.dropped = Counter(
            "dlserve_trace_spans_dropped",
            "Trace spans not delivered to the OTLP collector: queue_full (the batch span "
            "processor's queue was full), export_failed (the collector did not take them).",
            ["reason"],
            registry=registry,
        )
        self._queue_full = self.dropped.labels("queue_full")
        self._export_failed = self.dropped.labels("export_failed")
        self._building: threading.Thread | None = None
        if config.configured:
            # Loading the SDK takes a few hundred ms: at start, not in a request.
            self._pipeline = self._build()

    # -- settings (TraceSetting RPC, /v2[/models/{m}]/trace/setting) ---------

    def get_settings(self, model: str = "") -> dict[str, list[str]]:
        return self.settings.get(model)

    def update_settings(
        self, model: str, updates: Mapping[str, Sequence[str] | None]
    ) -> dict[str, list[str]]:
        current = self.settings.update(model, updates)
        self.on = self.settings.on
        if self.on and self._pipeline is None and self._building is None:
            # Switched on at run time without --trace-config: the SDK loads in
            # a thread of its own; requests are traced once it is ready.
            self._building = threading.Thread(target=self._build_later, daemon=True)
            self._building.start()
        return current

    def _build_later(self) -> None:
        try:
            self._pipeline = self._build()
        except Exception:
            logger.exception("tracing could not start")

    # -- starting a trace (transports, when ``on``) ---------------------------

    def start_grpc(
        self, model: str, transport: str, metadata: Iterable[Any] | None, started: float
    ) -> RequestTrace | None:
        """A trace for a gRPC request, or None when it is not sampled.
        ``metadata``: the call's invocation metadata ((key, value) pairs)."""
        if not self._sample(model):
            return None
        carrier = {}
        for key, value in metadata or ():
            if key in ("traceparent", "tracestate") and isinstance(value, str):
                carrier[key] = value
        return self._start(model, transport, carrier, started)

    def start_http(
        self, model: str, headers: Mapping[bytes, bytes], started: float
    ) -> RequestTrace | None:
        """A trace for a REST request (ASGI headers), or None."""
        if not self._sample(model):
            return None
        carrier = {}
        for key in (b"traceparent", b"tracestate"):
            value = headers.get(key)
            if value is not None:
                carrier[key.decode()] = value.decode("latin-1")
        return self._start(model, "http", carrier, started)

    def _sample(self, model: str) -> bool:
        sampler = self.settings.sampler(model)
        sampled = sampler.sample()
        if sampled and sampler.budget[0] == 0:  # the count is spent: maybe nothing traces now
            self.settings.spent()
            self.on = self.settings.on
        return sampled

    def _start(
        self, model: str, transport: str, carrier: dict[str, str], started: float
    ) -> RequestTrace | None:
        pipeline = self._pipeline
        if pipeline is None:  # still loading (switched on at run time)
            return None
        from serving import otlp

        root = pipeline.tracer.start_span(
            "infer",
            otlp.parent_of(carrier) if carrier else None,
            kind=otlp.SERVER,
            attributes={"dlserve.model": model, "dlserve.transport": transport},
            start_time=self._ns(started),
        )
        return RequestTrace(self, root, model, transport, started)

    def _build(self) -> "Pipeline":
        from serving.otlp import Pipeline

        logger.info("tracing: OTLP/HTTP export to %s", self._export.url)
        return Pipeline(self._export, __version__, self._exported)

    def _exported(self, count: int, delivered: bool) -> None:
        """The exporter's thread: ``count`` spans left the queue."""
        self._out[0] += count
        if not delivered:
            self._export_failed.inc(count)

    # -- writing spans -------------------------------------------------------

    def _queue(self, trace: RequestTrace) -> None:
        self._ended.append(trace)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the spans of every trace that ended (event loop thread)."""
        self._flush_handle = None
        ended, self._ended = self._ended, []
        pipeline = self._pipeline
        if pipeline is None or not ended:
            return
        batches: dict[int, list[RequestTrace]] = {}
        for trace in ended:
            token = trace.result.batch if trace.result is not None else None
            if token is not None:
                batches.setdefault(id(token), []).append(trace)
        capacity = self._export.max_queue_size
        for trace in ended:
            spans = FULL_TRACE if trace.result is not None else 1
            if self._in_queue - self._out[0] + spans > capacity:
                self._queue_full.inc(spans)
                continue
            self._in_queue += spans
            token = trace.result.batch if trace.result is not None else None
            members = batches.get(id(token), []) if token is not None else []
            try:
                self._write(pipeline, trace, members)
            except Exception:  # the SDK's: never the request's problem
                logger.exception("writing the spans of a trace failed")

    def _write(self, pipeline: "Pipeline", t: RequestTrace, batch: list[RequestTrace]) -> None:
        from serving import otlp

        tracer, ns, root = pipeline.tracer, self._ns, t.root
        result = t.result
        if result is not None:
            inside = otlp.under(root)
            queued = t.enqueued
            tracer.start_span("queue", inside, start_time=ns(queued)).end(
                ns(queued + result.queue_seconds)
            )
            run_start = queued + result.queue_seconds
            run_end = run_start + result.compute_seconds
            links = [otlp.Link(other.root.get_span_context()) for other in batch if other is not t]
            span = tracer.start_span(
                "batch",
                inside,
                links=links,
                start_time=ns(run_start),
                attributes={
                    "dlserve.batch.rows": result.batch_rows,
                    "dlserve.batch.traced_requests": len(batch) or 1,
                },
            )
            tracer.start_span(
                "compute",
                otlp.under(span),
                start_time=ns(run_start),
                attributes={"dlserve.batch.rows": result.batch_rows},
            ).end(ns(run_end))
            post = max(t.post_start, run_end)
            span.end(ns(post))
            tracer.start_span("encode", inside, start_time=ns(post)).end(ns(max(t.ended, post)))
            root.set_attribute("dlserve.batch.rows", result.batch_rows)
            root.set_attribute("dlserve.rows", t.rows)
        root.set_attribute("dlserve.version", t.version)
        root.set_attribute("dlserve.status_code", t.code)
        if t.code != "OK":
            root.set_status(otlp.Status(otlp.StatusCode.ERROR, t.message))
        root.end(ns(t.ended))

    def _ns(self, perf_seconds: float) -> int:
        return int(perf_seconds * 1e9) + self._offset_ns

    # -- lifecycle -----------------------------------------------------------

    async def shutdown(self) -> None:
        """Write what ended and give the exporter up to SHUTDOWN_SECS to
        deliver it; the rest is counted as dropped. Never blocks the loop."""
        self.flush()
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None:
            return
        worker = threading.Thread(target=pipeline.shutdown, name="otlp-shutdown", daemon=True)
        worker.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + SHUTDOWN_SECS + 0.5
        while worker.is_alive() and loop.time() < end:
            await asyncio.sleep(0.05)
        left = self._in_queue - self._out[0]
        if left > 0:
            self._export_failed.inc(left)
            logger.warning("tracing: %d spans were not exported before the server stopped", left)


def disabled() -> Tracing:
    """A Tracing that never samples (the service's default)."""
    return Tracing(TraceConfig())
