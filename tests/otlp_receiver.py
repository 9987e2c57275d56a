"""A real OTLP/HTTP trace receiver on 127.0.0.1 for tracing tests.

    receiver = OtlpReceiver().start()     # receiver.endpoint -> http://127.0.0.1:PORT/v1/traces
    receiver.posts                        # one entry per POST: the decoded spans of that batch
    receiver.headers                      # the request headers of each POST
    receiver.spans()                      # every span received, flattened
    receiver.stop()

It decodes the protobuf body with opentelemetry-proto (ExportTraceServiceRequest),
as a collector would, and answers 200 with an empty ExportTraceServiceResponse.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class OtlpReceiver:
    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.received = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                spans = []
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            spans.append(_span(span, resource))
                with receiver.received:
                    receiver.posts.append(spans)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver.received.notify_all()
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}/v1/traces"
        self._thread: threading.Thread | None = None

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self.server.serve_forever, name="test-otlp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def spans(self) -> list[dict[str, Any]]:
        with self.received:
            return [span for post in self.posts for span in post]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every span received once at least `count` have arrived (or the timeout passed)."""
        with self.received:
            self.received.wait_for(lambda: sum(len(p) for p in self.posts) >= count, timeout)
        return self.spans()


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _span(span: Any, resource: dict[str, str]) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind,  # 2 server, 3 client
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "attributes": {a.key: _value(a.value) for a in span.attributes},
        "events": [e.name for e in span.events],
        "resource": resource,
    }
