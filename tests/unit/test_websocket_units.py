"""WebSocket pieces in process: the config block, token lifting, the Origin check, close-code mapping."""

from __future__ import annotations

import pytest

from kairos.config import ConfigError, parse_config
from kairos.errors import GatewayError
from kairos.middleware.cors import CorsPolicy
from kairos.config.models import CorsConfig
from kairos.websocket.policies import SUBPROTOCOL_KEY, HandshakeToken, OriginCheck
from kairos.websocket.relay import wire_code
from kairos.websocket.settings import WebSocketConfig


def ws_router(**extra):
    return {"external_path": "/ws", "internal_path": "/ws", "methods": ["GET"], "protocol": "websocket",
            "host": "ws://127.0.0.1", "port": 9000, **extra}


def problems(cfg) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(cfg)
    return info.value.problems


def test_websocket_block_defaults_override_and_validation():
    cfg = parse_config({"websocket": {"idle_timeout_ms": 5000}, "routers": [
        ws_router(), ws_router(external_path="/own", websocket={"max_connections": 3})]})
    inherited = cfg.policy(cfg.routers[0], "websocket")
    assert inherited.idle_timeout_ms == 5000 and inherited.max_message_bytes == 1024 * 1024
    own = cfg.policy(cfg.routers[1], "websocket")
    assert own.max_connections == 3 and own.idle_timeout_ms == 0  # a route's block replaces the default whole
    assert parse_config({"routers": [ws_router()]}).websocket == WebSocketConfig()

    found = problems({"routers": [
        ws_router(websocket={"token_from": ["cookie"], "allowed_origins": ["example.com/x"], "max_message_bytes": 0}),
        {**ws_router(), "protocol": "http", "websocket": {}},
        ws_router(methods=["POST"]),
        ws_router(cache={"enabled": True}, response_transformation={"headers": []}),
    ]})
    assert "routers[0].websocket.token_from: unknown token source 'cookie' (one of header, subprotocol, query:<name>)" in found
    assert any(p.startswith("routers[0].websocket.allowed_origins: 'example.com/x' is not an origin") for p in found)
    assert "routers[0].websocket.max_message_bytes: must be greater than 0" in found
    assert any(p.startswith("routers[1]") and "'websocket' block needs" in p for p in found)
    assert any(p.startswith("routers[2]") and "must allow GET" in p for p in found)
    assert "routers[3]: cache, response_transformation: not applied on a websocket route (messages are relayed as they are)" in found


async def call(layer, scope):
    seen = {}

    async def inner(scope, receive, send):
        seen.update(scope)

    layer.app = inner
    await layer(scope, None, None)
    return seen


def ws_scope(headers=(), subprotocols=(), query=b""):
    return {"type": "websocket", "headers": list(headers), "subprotocols": list(subprotocols), "query_string": query}


async def test_token_lifted_from_subprotocol_or_query_only_when_allowed():
    both = HandshakeToken(None, WebSocketConfig(token_from=["subprotocol", "query:access_token"]))
    seen = await call(both, ws_scope(subprotocols=["chat", "bearer", "tok.en"]))
    assert (b"authorization", b"Bearer tok.en") in seen["headers"]
    assert seen["subprotocols"] == ["chat"] and seen[SUBPROTOCOL_KEY] == "bearer"
    seen = await call(both, ws_scope(subprotocols=["Bearer.abc", "v2"]))
    assert (b"authorization", b"Bearer abc") in seen["headers"] and seen["subprotocols"] == ["v2"]
    seen = await call(both, ws_scope(query=b"a=1&access_token=x%2By&b=2"))
    assert (b"authorization", b"Bearer x+y") in seen["headers"] and seen["query_string"] == b"a=1&b=2"
    # `header` not listed: a client's Authorization header is not used.
    seen = await call(both, ws_scope(headers=[(b"authorization", b"Bearer h")]))
    assert not [h for h in seen["headers"] if h[0] == b"authorization"]
    # Only the header: subprotocols and query pass untouched.
    header_only = HandshakeToken(None, WebSocketConfig())
    seen = await call(header_only, ws_scope(subprotocols=["bearer", "t"], query=b"access_token=t"))
    assert seen["subprotocols"] == ["bearer", "t"] and seen["query_string"] == b"access_token=t"
    assert not [h for h in seen["headers"] if h[0] == b"authorization"]


async def test_origin_check():
    check = OriginCheck(None, CorsPolicy(CorsConfig(allowed_origins=["https://*.example.com"])))
    await call(check, ws_scope(headers=[(b"origin", b"https://app.example.com")]))
    await call(check, ws_scope())  # no Origin: not a browser
    with pytest.raises(GatewayError) as info:
        await call(check, ws_scope(headers=[(b"origin", b"https://example.com.evil.net")]))
    assert info.value.status == 403


def test_codes_that_never_go_on_the_wire():
    assert [wire_code(c) for c in (1000, 1005, 1006, 1015, 4001, 1011)] == [1000, 1001, 1001, 1011, 4001, 1011]
