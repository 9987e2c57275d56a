"""Helpers for the cache layer's in-process tests: a scripted origin and a request runner."""

from __future__ import annotations

import asyncio

from kairos.cache import Cache, CachePolicy, CacheStores
from kairos.config.cache import CacheConfig


class Origin:
    """A scripted upstream as an ASGI app: `respond(scope) -> (status, headers dict, body chunks)`."""

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[dict] = []
        self.delay = 0.0

    async def __call__(self, scope, receive, send):
        self.calls.append({"method": scope["method"], "headers": dict((k.decode(), v.decode()) for k, v in scope["headers"])})
        if self.delay:
            await asyncio.sleep(self.delay)
        result = self.respond(scope)
        if isinstance(result, Exception):
            raise result
        status, headers, chunks = result
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
        for i, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
        if not chunks:
            await send({"type": "http.response.body", "body": b""})


def build(origin, config, stores, redis_url=""):
    store, inflight, refreshing = stores.store_for(config, redis_url)
    return Cache(origin, CachePolicy("/r/{id}", config), store, inflight, refreshing)


def layer(origin, **cfg):
    return build(origin, CacheConfig(enabled=True, **cfg), CacheStores())


async def get(app, path="/r/1", method="GET", headers=None, query=b""):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    await app(scope, receive, send)
    start = sent[0]
    hdrs = {}
    for k, v in start["headers"]:
        hdrs.setdefault(k.decode(), v.decode())
    return start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


def ok(body=b"hello", **headers):
    return lambda scope: (200, {"content-type": "text/plain", **headers}, [body])
