"""The gateway's tracer: an OpenTelemetry SDK TracerProvider of its own, and the
per-request trace (one server span, one client span per upstream attempt).

Spans are built by hand with the SDK and the W3C propagator: the generic ASGI
instrumentation made three spans per request and cost ~150-300 us (NOTES.md).
The provider is not installed as the global one, so an application embedding
kairos keeps its own.

The processor is a BatchSpanProcessor: spans are queued (2048 at most, the rest
dropped and counted by the SDK) and exported from the SDK's own thread, in
batches; a collector that is down costs the request path nothing but the queue
append.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kairos import __version__
from kairos.tracing.config import TracingConfig

if TYPE_CHECKING:
    from kairos.types import Scope

PROPAGATOR = TraceContextTextMapPropagator()
_UNSAMPLED = trace_api.INVALID_SPAN
SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT
ERROR = Status(StatusCode.ERROR)

def make_sampler(config: TracingConfig) -> Sampler:
    if config.sampler == "always_on":
        return ALWAYS_ON
    if config.sampler == "always_off":
        return ALWAYS_OFF
    if config.sampler == "ratio":
        return TraceIdRatioBased(config.ratio)
    return ParentBased(TraceIdRatioBased(config.ratio))


def make_exporter(config: TracingConfig) -> SpanExporter | None:
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=config.service_name)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    headers = {k: v.get_secret_value() for k, v in config.headers.items()}
    return OTLPSpanExporter(endpoint=config.endpoint, headers=headers or None, timeout=5)


class Tracer:
    """One TracerProvider for one `tracing` block (a reload with the same block keeps it)."""

    error_status = ERROR

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None, *, batch: bool = True) -> None:
        self.config = config
        self.provider = TracerProvider(
            sampler=make_sampler(config),
            resource=Resource.create({"service.name": config.service_name, "service.version": __version__}),
            shutdown_on_exit=False,
        )
        self.exporter = exporter if exporter is not None else make_exporter(config)
        self.batch = batch
        # The export thread starts with the first request, not here: a config compiled only to be
        # checked (the admin API's dry run) must not leave a thread and an HTTP session behind.
        self.exporting = self.exporter is None
        self.tracer = self.provider.get_tracer("kairos", __version__)

    def begin_export(self) -> None:
        self.exporting = True
        if self.batch:
            self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        else:
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def start(self, scope: Scope, name: str, attributes: dict[str, Any]) -> RequestTrace:
        """The server span of one request, continuing the client's trace when it sent one."""
        if not self.exporting:
            self.begin_export()
        carrier = None
        for key, value in scope["headers"]:
            if key == b"traceparent" or key == b"tracestate":
                if carrier is None:
                    carrier = {}
                carrier[key.decode()] = value.decode("latin-1")
        parent = PROPAGATOR.extract(carrier) if carrier is not None else None
        span = self.tracer.start_span(name, parent, SERVER, attributes)
        return RequestTrace(self.tracer, span)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestTrace:
    """What travels in `scope["kairos.trace"]`: the server span and its context."""

    __slots__ = ("tracer", "span", "context", "recording", "attempts")

    def __init__(self, tracer: trace_api.Tracer, span: trace_api.Span) -> None:
        self.tracer = tracer
        self.span = span
        self.recording = span.is_recording()
        # The parent context of client spans; an unsampled request makes none through the SDK.
        self.context = trace_api.set_span_in_context(span) if self.recording else None
        self.attempts = 0  # upstream attempts so far: the next one's number

    @property
    def trace_id(self) -> str:
        return format(self.span.get_span_context().trace_id, "032x")

    def attempt(
        self, method: str, origin: str, host: str, port: int, path: str, headers: list[tuple[bytes, bytes]]
    ) -> trace_api.Span:
        """Start the client span of the next upstream attempt and append its `traceparent`
        (and `tracestate`) to `headers`: the upstream's parent is this span. Attempts
        are numbered from 0 in the order they are made (retries are siblings)."""
        attempt = self.attempts
        self.attempts = attempt + 1
        if not self.recording:
            # Not sampled: the SDK would make a NonRecordingSpan just to carry a new span id,
            # so the id is made here and written as the propagator writes it (~5 us less).
            parent = self.span.get_span_context()
            span_id = self.tracer.id_generator.generate_span_id()  # type: ignore[attr-defined]
            headers.append((b"traceparent", b"00-%032x-%016x-%02x" % (parent.trace_id, span_id, parent.trace_flags)))
            if parent.trace_state:
                headers.append((b"tracestate", parent.trace_state.to_header().encode("latin-1")))
            return _UNSAMPLED
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "server.address": host,
            "server.port": port,
            "url.full": origin + path.partition("?")[0],
            "kairos.attempt": attempt,
        }
        if attempt:
            attributes["http.request.resend_count"] = attempt
        span = self.tracer.start_span(method, self.context, CLIENT, attributes)
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, trace_api.set_span_in_context(span))
        for key, value in carrier.items():
            headers.append((key.encode(), value.encode("latin-1")))
        return span

    @staticmethod
    def attempt_done(span: trace_api.Span, status: int = 0, error: str | None = None) -> None:
        if span.is_recording():
            if status:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_attribute("error.type", str(status))
                    span.set_status(ERROR)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(ERROR)
        span.end()
