"""The Transform layer in process: what the Forwarder is handed, what the client is sent."""

from __future__ import annotations

import gzip
from types import SimpleNamespace

import orjson
import pytest

from kairos.routing import PathTemplate
from kairos.transform.config import RequestTransformation, ResponseTransformation
from kairos.config.models import RouterConfig
from kairos.transform.layer import Transform, configured, transform_layer


class Inner:
    """Stands in for the Forwarder: records what it got, answers with a canned response."""

    def __init__(self, status=200, headers=None, chunks=(b'{"a":1}',)):
        self.status = status
        self.headers = headers if headers is not None else [(b"content-type", b"application/json")]
        self.chunks = chunks
        self.scope = None
        self.body = b""

    async def __call__(self, scope, receive, send):
        self.scope = scope
        while True:
            m = await receive()
            self.body += m.get("body", b"")
            if not m.get("more_body"):
                break
        await send({"type": "http.response.start", "status": self.status, "headers": list(self.headers)})
        for i, c in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": c, "more_body": i < len(self.chunks) - 1})


def layer(inner, request=None, response=None, external="/api/{id}", internal="/v1/{id}"):
    req = RequestTransformation.model_validate(request) if request is not None else None
    resp = ResponseTransformation.model_validate(response) if response is not None else None
    if not configured(req, resp):
        return inner
    return Transform(inner, external, PathTemplate(internal, ["id"]), req, resp)


async def call(app, *, method="GET", path="/api/7", query=b"", headers=(), body=b"", chunks=None):
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [(n.lower().encode(), v.encode()) for n, v in headers], "kairos.params": {"id": "7"},
             "kairos.request_id": "rid"}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)] if chunks else [{"type": "http.request", "body": body}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent = []

    async def send(m):
        sent.append(m)

    await app(scope, receive, send)
    start = sent[0]
    return scope, start["status"], start["headers"], b"".join(m.get("body", b"") for m in sent[1:])


def test_no_transformation_means_no_layer():
    inner = Inner()
    assert layer(inner) is inner
    assert layer(inner, {}, {"headers": [], "status_code_mappings": []}) is inner


def test_factory_returns_none_without_a_transformation():
    def route(**blocks):
        rc = RouterConfig.model_validate({"external_path": "/api/{id}", "internal_path": "/v1/{id}", "methods": ["GET"],
                                          "host": "http://127.0.0.1", "port": 9, **blocks})
        return SimpleNamespace(config=rc, name=rc.external_path, template=PathTemplate(rc.internal_path, ["id"]))

    assert transform_layer(route(), None) is None
    assert transform_layer(route(request_transformation={}, response_transformation={"json": []}), None) is None
    wrap = transform_layer(route(response_transformation={"status_code_mappings": [{"from": 404, "to": 200}]}), None)
    assert isinstance(wrap(Inner()), Transform)


async def test_query_only_keeps_internal_path():
    inner = Inner()
    scope, *_ = await call(layer(inner, {"query_params": [{"action": "add", "name": "k", "value": "v"}]}),
                           query=b"a=%2F&a=2")
    assert scope["kairos.upstream_target"] == "/v1/7?a=%2F&a=2&k=v"


async def test_rewrite_keeps_the_client_query():
    inner = Inner()
    scope, *_ = await call(layer(inner, {"path": {"pattern": "^/api/(.+)$", "replacement": "/v2/$1"}}),
                           query=b"x=1")
    assert scope["kairos.upstream_target"] == "/v2/7?x=1"
    scope, *_ = await call(layer(inner, {"path": {"pattern": "^/nomatch", "replacement": "/v2"}}))
    assert scope["kairos.upstream_target"] == "/v1/7"


async def test_request_json_edited_and_length_recomputed():
    inner = Inner()
    app = layer(inner, {"json": [{"action": "set", "path": "/user", "value": "{request_id}"},
                                 {"action": "remove", "path": "/password"}]})
    body = b'{"password":"p","n":1}'
    scope, *_ = await call(app, method="POST", body=body, chunks=[body[:5], body[5:]],
                           headers=[("Content-Type", "application/json; charset=utf-8"),
                                    ("Transfer-Encoding", "chunked")])
    assert orjson.loads(inner.body) == {"n": 1, "user": "rid"}
    assert (b"content-length", str(len(inner.body)).encode()) in scope["headers"]
    assert not any(n == b"transfer-encoding" for n, _ in scope["headers"])


@pytest.mark.parametrize(
    "headers, body, reason",
    [
        ([("Content-Type", "text/plain"), ("Content-Length", "7")], b'{"a":1}', "not JSON (text/plain)"),
        ([("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("Content-Length", "20")],
         gzip.compress(b'{"a":1}'), "content-encoding gzip"),
        ([("Content-Type", "application/json"), ("Content-Length", "20")], b'{"a":1, "b": [1, 2, 3]}'[:20],
         "larger than max_json_body (10)"),
        ([("Content-Type", "application/json"), ("Content-Length", "8")], b'{"a":1,}', "not valid JSON"),
    ],
)
async def test_request_json_left_alone_and_why(headers, body, reason):
    inner = Inner()
    app = layer(inner, {"json": [{"action": "set", "path": "/x", "value": 1}], "max_json_body": 10})
    scope, *_ = await call(app, method="POST", body=body, headers=headers)
    assert inner.body == body
    assert reason in scope["kairos.transform_skipped"][0]


async def test_request_json_chunked_beyond_limit_streams_untouched():
    inner = Inner()
    app = layer(inner, {"json": [{"action": "set", "path": "/x", "value": 1}], "max_json_body": 10})
    chunks = [b'{"a":', b'"0123456789', b'"}']
    scope, *_ = await call(app, method="POST", chunks=chunks,
                           headers=[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")])
    assert inner.body == b"".join(chunks)
    assert "larger than max_json_body" in scope["kairos.transform_skipped"][0]


async def test_response_status_headers_and_json():
    inner = Inner(status=404, headers=[(b"content-type", b"application/problem+json"), (b"server", b"up"),
                                       (b"content-length", b"7")])
    app = layer(inner, response={
        "headers": [{"action": "remove", "name": "Server"}, {"action": "add", "name": "X-Powered-By", "value": "K"}],
        "status_code_mappings": [{"from": 404, "to": 200, "condition": "path ^= '/api/'"}],
        "json": [{"action": "add", "path": "/gateway", "value": "kairos"}],
    })
    scope, status, headers, body = await call(app)
    assert status == 200 and scope["kairos.upstream_status"] == 404
    assert orjson.loads(body) == {"a": 1, "gateway": "kairos"}
    assert headers == [(b"content-type", b"application/problem+json"), (b"x-powered-by", b"K"),
                       (b"content-length", str(len(body)).encode())]


async def test_response_json_streamed_beyond_limit():
    chunks = (b'{"a":"', b"x" * 20, b'"}')
    inner = Inner(chunks=chunks)
    app = layer(inner, response={"json": [{"action": "set", "path": "/b", "value": 1}], "max_json_body": 10})
    scope, status, headers, body = await call(app)
    assert body == b"".join(chunks)
    assert "larger than max_json_body" in scope["kairos.transform_skipped"][0]


async def test_head_and_204_are_not_buffered():
    inner = Inner(status=204, headers=[(b"content-type", b"application/json")], chunks=(b"",))
    app = layer(inner, response={"json": [{"action": "set", "path": "/b", "value": 1}]})
    scope, status, headers, body = await call(app)
    # Buffered, the empty body would fail to parse and gain a Content-Length: 0 and a skip note.
    assert status == 204 and body == b"" and headers == [(b"content-type", b"application/json")]
    assert "kairos.transform_skipped" not in scope
    inner = Inner(headers=[(b"content-type", b"application/json"), (b"content-length", b"7")], chunks=(b"",))
    app = layer(inner, response={"json": [{"action": "set", "path": "/b", "value": 1}]})
    scope, status, headers, body = await call(app, method="HEAD")
    assert status == 200 and body == b"" and headers == inner.headers  # the GET's length, kept
    assert "kairos.transform_skipped" not in scope
