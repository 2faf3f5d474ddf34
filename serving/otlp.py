"""The OpenTelemetry SDK side of tracing: a tracer whose spans go through a
``BatchSpanProcessor`` to an OTLP/HTTP exporter, and the W3C trace-context
propagator. Imported by ``serving.tracing`` only when tracing is first
switched on, so a server that never traces never loads the SDK.

Exports run in the processor's own thread; the request path only appends
ended spans to its queue. What an export could not deliver (collector down,
refused, too slow) is counted by ``CountingExporter``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from serving.trace_settings import Export

logger = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
SERVER = SpanKind.SERVER
ERROR = Status(StatusCode.ERROR)
__all__ = ["Link", "Pipeline", "SERVER", "ERROR", "Status", "StatusCode", "parent_of", "under"]


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting the spans it was handed and those it
    failed to deliver (``on_done(count, delivered)``)."""

    def __init__(self, inner: SpanExporter, on_done: Callable[[int, bool], None]) -> None:
        self._inner = inner
        self._on_done = on_done

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the processor's thread
            logger.exception("exporting %d spans failed", len(spans))
        self._on_done(len(spans), result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class Pipeline:
    """Tracer -> batch processor -> counting OTLP/HTTP exporter."""

    def __init__(self, export: Export, version: str, on_done: Callable[[int, bool], None]) -> None:
        resource = Resource.create(
            {"service.name": "dlserve", "service.version": version, **dict(export.resource)}
        )
        # Which requests are traced is decided before a span starts
        # (serving.trace_settings), whatever flags a client's traceparent has.
        self.provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
        exporter = OTLPSpanExporter(endpoint=export.url, timeout=export.timeout_s)
        self.processor = BatchSpanProcessor(
            CountingExporter(exporter, on_done),
            max_queue_size=export.max_queue_size,
            schedule_delay_millis=export.schedule_delay_ms,
            max_export_batch_size=min(export.max_export_batch_size, export.max_queue_size),
        )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("dlserve")

    def shutdown(self) -> None:
        """Blocking: export what is queued (the caller bounds the wait)."""
        self.processor.shutdown()  # type: ignore[no-untyped-call]


def parent_of(carrier: Mapping[str, str]) -> Any:
    """The context a W3C ``traceparent``/``tracestate`` carrier names (an
    empty context when it names none or is malformed)."""
    return _propagator.extract(carrier)


def under(span: Any) -> Any:
    """A context whose current span is ``span``: what its children start in."""
    return trace_api.set_span_in_context(span)
