"""The transformation layer: one per route that configures a transformation, none otherwise.

Request side (before the Forwarder): header edits replace `scope["headers"]`;
a path rewrite or query edit puts the upstream request target in
`scope["kairos.upstream_target"]` (the Forwarder sends it instead of
internal_path + query); a JSON body edit buffers the body (up to
`max_json_body`) and hands the Forwarder the edited one with its new
Content-Length. Response side: header edits alone are a response-start hook
(kairos.proxy.exchange); a status mapping or a JSON edit needs a `send`
wrapper, which maps the status, edits the headers and, for JSON, buffers and
edits the body. The gateway's own error responses are never transformed:
GatewayEndpoint answers a raised GatewayError outside this layer's `send`, and
drops the hooks the route's layers registered.

Scope keys written: `kairos.upstream_target`, `kairos.client_headers` (the
headers as the client sent them, once `headers` holds the upstream's),
`kairos.upstream_status` (the upstream's status when a mapping changed it) and
`kairos.transform_skipped` (why a JSON body was left alone); the access log
reads the last three.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from kairos.proxy.exchange import on_response_start
from kairos.routing import PathTemplate
from kairos.transform.config import RequestTransformation, ResponseTransformation
from kairos.transform.edits import HeaderEdits, JsonEdits, PathRewriter, QueryEdits, StatusMap
from kairos.transform.view import RequestView
from kairos.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

_NO_BODY_STATUSES = frozenset({204, 304})


def _note(scope: Scope, text: str) -> None:
    notes = scope.get("kairos.transform_skipped")
    if notes is None:
        scope["kairos.transform_skipped"] = [text]
    else:
        notes.append(text)


def json_skip_reason(headers: list[tuple[bytes, bytes]], limit: int) -> str | None:
    """Why a body with these headers is not edited as JSON (None: it is)."""
    ctype = b""
    length = -1
    for name, value in headers:
        if name == b"content-type":
            ctype = value
        elif name == b"content-encoding":
            if value.strip().lower() not in (b"", b"identity"):
                return f"content-encoding {value.decode('latin-1')}"
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return "invalid content-length"
    media = ctype.split(b";", 1)[0].strip().lower()
    if media != b"application/json" and not media.endswith(b"+json"):
        return f"not JSON ({media.decode('latin-1') or 'no content-type'})"
    if length > limit:
        return f"body of {length} bytes is larger than max_json_body ({limit})"
    return None


def _dump(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits: orjson refuses it
        import json

        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _edit_json(body: bytes, edits: JsonEdits, view: RequestView) -> bytes | str:
    """The edited body, or why it was left alone."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "body is not valid JSON"
    edits.apply(doc, view)
    return _dump(doc)


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    out = [h for h in headers if h[0] != b"content-length" and h[0] != b"transfer-encoding"]
    out.append((b"content-length", str(length).encode()))
    return out


class Transform:
    __slots__ = ("app", "route_name", "template", "request_headers", "path", "query", "request_json",
                 "request_limit", "response_headers", "statuses", "response_json", "response_limit", "wraps_send")

    def __init__(self, app: ASGIApp, route_name: str, template: PathTemplate,
                 request: RequestTransformation | None, response: ResponseTransformation | None) -> None:
        self.app = app
        self.route_name = route_name
        self.template = template
        request = request or RequestTransformation()
        response = response or ResponseTransformation()
        self.request_headers = HeaderEdits(request.headers, "request") if request.headers else None
        self.path = PathRewriter(request.path) if request.path is not None else None
        self.query = QueryEdits(request.query_params) if request.query_params else None
        self.request_json = JsonEdits(request.json_edits) if request.json_edits else None
        self.request_limit = request.max_json_body
        self.response_headers = HeaderEdits(response.headers, "response") if response.headers else None
        self.statuses = StatusMap(response.status_code_mappings) if response.status_code_mappings else None
        self.response_json = JsonEdits(response.json_edits) if response.json_edits else None
        self.response_limit = response.max_json_body
        # Header edits alone are a response-start hook; a status mapping or a body edit needs a
        # send wrapper (the Exchange records the status before its hooks run).
        self.wraps_send = bool(self.statuses or self.response_json)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = RequestView(scope, self.route_name)
        if self.request_headers is not None:
            scope["kairos.client_headers"] = view.headers  # what the client sent, for the access log
            scope["headers"] = self.request_headers.apply(view.headers, view)
        if self.path is not None or self.query is not None:
            scope["kairos.upstream_target"] = self.target(scope, view)
        if self.request_json is not None:
            receive = await self.edit_request_body(scope, receive, view)
        if self.wraps_send:
            send = self.response_sender(scope, send, view)
        elif self.response_headers is not None:
            edits = self.response_headers

            def edit_headers(scope: Scope, message: Message) -> None:
                message["headers"] = edits.apply(message.get("headers", []), view)

            send = on_response_start(scope, send, edit_headers)
        await self.app(scope, receive, send)

    def target(self, scope: Scope, view: RequestView) -> str:
        """The upstream request target: the rewritten path (else internal_path) and the edited query."""
        path = self.path.apply(view.path, view) if self.path is not None else None
        if path is None:
            path = self.template.render(scope["kairos.params"])
        qs = scope.get("query_string", b"").decode("latin-1")
        if self.query is not None:
            qs = self.query.apply(qs, view)
        return path + "?" + qs if qs else path

    # ------------------------------------------------------------------ request body
    async def edit_request_body(self, scope: Scope, receive: Receive, view: RequestView) -> Receive:
        headers = scope["headers"]
        if not any(n == b"content-length" and v.strip() not in (b"0", b"") or n == b"transfer-encoding"
                   for n, v in headers):
            return receive  # no body
        limit = self.request_limit
        reason = json_skip_reason(headers, limit)
        if reason is not None:
            _note(scope, f"request_json: {reason}")
            return receive
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return _replay(messages, receive)
            size += len(message.get("body", b""))
            if size > limit:
                _note(scope, f"request_json: body larger than max_json_body ({limit})")
                return _replay(messages, receive)
            if not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages)
        edited = _edit_json(body, self.request_json, view)  # type: ignore[arg-type]
        if isinstance(edited, str):
            _note(scope, f"request_json: {edited}")
            return _replay(messages, receive)
        scope.setdefault("kairos.client_headers", view.headers)
        scope["headers"] = _with_length(headers, len(edited))
        return _replay([{"type": "http.request", "body": edited, "more_body": False}], receive)

    # ------------------------------------------------------------------ response
    def response_sender(self, scope: Scope, send: Send, view: RequestView) -> Send:
        statuses = self.statuses
        header_edits = self.response_headers
        json_edits = self.response_json
        limit = self.response_limit
        held: dict[str, Any] | None = None  # the response start while a JSON body is buffered
        chunks: list[bytes] = []
        size = 0

        async def send_transformed(message: Message) -> None:
            nonlocal held, size
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                if statuses is not None:
                    mapped = statuses.map(status, view)
                    if mapped != status:
                        scope["kairos.upstream_status"] = status
                        status = mapped
                if header_edits is not None:
                    headers = header_edits.apply(headers, view)
                start = {"type": kind, "status": status, "headers": headers}
                if json_edits is not None and scope["method"] != "HEAD" and status not in _NO_BODY_STATUSES:
                    reason = json_skip_reason(headers, limit)
                    if reason is None:
                        held = start
                        return
                    _note(scope, f"response_json: {reason}")
                await send(start)
                return
            if held is None or kind != "http.response.body":
                await send(message)
                return
            body = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            if size > limit:  # no Content-Length and too long: send what we have, stream the rest
                _note(scope, f"response_json: body larger than max_json_body ({limit})")
                start, held = held, None
                await send(start)
                await send({"type": kind, "body": b"".join(chunks), "more_body": message.get("more_body", False)})
                return
            if message.get("more_body", False):
                return
            start, held = held, None
            whole = b"".join(chunks)
            edited = _edit_json(whole, json_edits, view)  # type: ignore[arg-type]
            if isinstance(edited, str):
                _note(scope, f"response_json: {edited}")
                edited = whole
            start["headers"] = _with_length(start["headers"], len(edited))
            await send(start)
            await send({"type": kind, "body": edited, "more_body": False})

        return send_transformed


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that returns `messages` first, then reads on from `receive`."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def configured(request: RequestTransformation | None, response: ResponseTransformation | None) -> bool:
    """Whether the blocks ask for anything (empty blocks and empty lists cost nothing)."""
    return bool(
        request is not None and (request.headers or request.path or request.query_params or request.json_edits)
        or response is not None and (response.headers or response.status_code_mappings or response.json_edits)
    )


def transform_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    """The layer factory (kairos/layers.py): None on a route without a transformation."""
    rc = route.config
    if not configured(rc.request_transformation, rc.response_transformation):
        return None
    return partial(Transform, route_name=route.name, template=route.template,
                   request=rc.request_transformation, response=rc.response_transformation)
