"""JWT authentication: tokens minted with python-jose and PyJWT, every rejection, forwarding, cache."""

from __future__ import annotations

import base64
import json

import jwt as pyjwt
import pytest
from jose import jwt as jose_jwt
from prometheus_client import REGISTRY

from edge_support import (
    SECRET, JwksServer, claims, echoed_headers, ec_key, inproc, now, private_pem, public_jwk,
    public_pem, route, rsa_key,
)
from kairos.auth.jwt import JwtVerifier
from kairos.config import parse_config


@pytest.fixture(scope="module")
def rsa():
    return rsa_key()


@pytest.fixture(scope="module")
def ec():
    return ec_key()


def cfg(upstream, jwt_block, **route_extra):
    return {
        "jwt": jwt_block,
        "routers": [
            route(upstream, "/api", auth_required=True, **route_extra),
            route(upstream, "/open"),
        ],
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def failures(route_name: str, reason: str) -> float:
    return REGISTRY.get_sample_value("kairos_auth_failures_total", {"route": route_name, "reason": reason}) or 0.0


# ----------------------------------------------------------------------------- accepted tokens
@pytest.mark.parametrize("minter", ["jose", "pyjwt"])
async def test_hs256_token_from_either_library(upstream, minter):
    block = {"secret": SECRET, "issuer": "https://issuer", "audience": "kairos", "required_claims": ["sub", "role"],
             "forward_claims": {"sub": "X-User-Id", "roles": "X-User-Roles"}}
    payload = claims(iss="https://issuer", aud="kairos", role="admin", roles=["a", "b"])
    token = (jose_jwt.encode(payload, SECRET, algorithm="HS256") if minter == "jose"
             else pyjwt.encode(payload, SECRET, algorithm="HS256"))
    async with inproc(cfg(upstream, block)) as c:
        r = await c.get("/api", headers={**bearer(token), "X-User-Id": "mallory"})
        assert r.status_code == 200, r.text
        h = echoed_headers(r)
        assert h["x-user-id"] == ["alice"]  # the client's copy is gone, the verified one is set
        assert h["x-user-roles"] == ["a,b"]
        assert h["authorization"] == [f"Bearer {token}"]  # forward_token defaults to true
        for method in ("POST", "DELETE"):  # every method of a protected route is protected
            assert (await c.request(method, "/api")).status_code == 401


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("minter", ["jose", "pyjwt"])
async def test_public_key_algorithms(upstream, rsa, ec, alg, minter):
    key = rsa if alg == "RS256" else ec
    block = {"algorithms": [alg], "public_key": public_pem(key)}
    token = (jose_jwt.encode(claims(), private_pem(key), algorithm=alg) if minter == "jose"
             else pyjwt.encode(claims(), private_pem(key), algorithm=alg))
    async with inproc(cfg(upstream, block)) as c:
        assert (await c.get("/api", headers=bearer(token))).status_code == 200
        other = rsa_key() if alg == "RS256" else ec_key()
        forged = pyjwt.encode(claims(), private_pem(other), algorithm=alg)
        r = await c.get("/api", headers=bearer(forged))
        assert r.status_code == 401 and "signature" in r.json()["error"]


async def test_jwks_rotation_and_outage(upstream, rsa, ec):
    server = await JwksServer().start()
    try:
        server.keys = [public_jwk(rsa, "k1", "RS256")]
        block = {"algorithms": ["RS256", "ES256"], "jwks_url": server.url, "jwks_min_refresh_seconds": 0}
        t1 = pyjwt.encode(claims(), private_pem(rsa), algorithm="RS256", headers={"kid": "k1"})
        t2 = jose_jwt.encode(claims(sub="bob"), private_pem(ec), algorithm="ES256", headers={"kid": "k2"})
        async with inproc(cfg(upstream, block)) as c:
            assert server.hits == 1  # fetched at start, through the gateway's own client
            assert (await c.get("/api", headers=bearer(t1))).status_code == 200
            assert (await c.get("/api", headers=bearer(t1))).status_code == 200
            assert server.hits == 1
            # Rotation: k2 published, k1 withdrawn. An unknown kid triggers a refetch.
            server.keys = [public_jwk(ec, "k2", "ES256")]
            assert (await c.get("/api", headers=bearer(t2))).status_code == 200
            assert server.hits == 2
            r = await c.get("/api", headers=bearer(t1))  # cached before, but its key is gone now
            assert r.status_code == 401
            # The endpoint goes down: the last good set keeps working.
            server.down = True
            t3 = pyjwt.encode(claims(sub="carol"), private_pem(ec), algorithm="ES256", headers={"kid": "k2"})
            assert (await c.get("/api", headers=bearer(t3))).status_code == 200
            r = await c.get("/api", headers=bearer(
                pyjwt.encode(claims(), private_pem(ec), algorithm="ES256", headers={"kid": "nope"})))
            assert r.status_code == 401 and "kid" in r.json()["error"]
    finally:
        await server.stop()


async def test_unknown_kid_refetch_is_rate_limited(upstream, rsa):
    server = await JwksServer().start()
    try:
        server.keys = [public_jwk(rsa, "k1", "RS256")]
        block = {"algorithms": ["RS256"], "jwks_url": server.url, "jwks_min_refresh_seconds": 30}
        async with inproc(cfg(upstream, block)) as c:
            for i in range(5):
                t = pyjwt.encode(claims(), private_pem(rsa), algorithm="RS256", headers={"kid": f"rand{i}"})
                assert (await c.get("/api", headers=bearer(t))).status_code == 401
            assert server.hits == 1  # no refetch within jwks_min_refresh_seconds
    finally:
        await server.stop()


# ----------------------------------------------------------------------------- rejections
def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _rejections(rsa_pub_pem: str):
    good = jose_jwt.encode(claims(aud="kairos", iss="iss"), SECRET)
    head, body, sig = good.split(".")
    yield "alg_none", _b64({"alg": "none", "typ": "JWT"}) + "." + body + ".", "algorithm", "alg none"
    yield "alg_not_allowed", pyjwt.encode(claims(aud="kairos", iss="iss"), SECRET, algorithm="HS512"), "algorithm", "HS512"
    # Algorithm confusion: HMAC-signed with the RSA public key (PEM) as the secret.
    import hmac, hashlib
    signing_input = _b64({"alg": "HS256", "typ": "JWT"}) + "." + body
    mac = hmac.new(rsa_pub_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    yield "hs_with_public_key", signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode(), "bad_signature", "signature"
    yield "two_segments", head + "." + body, "malformed", "malformed"
    yield "garbage_header", "!!!." + body + "." + sig, "malformed", "malformed"
    yield "header_not_json", _b64("x")[:-1] + "." + body + "." + sig, "malformed", "malformed"
    yield "too_large", jose_jwt.encode(claims(aud="kairos", iss="iss", pad="x" * 9000), SECRET), "too_large", "larger"
    yield "expired", jose_jwt.encode(claims(aud="kairos", iss="iss", exp=now() - 120), SECRET), "expired", "expired"
    yield "no_exp", jose_jwt.encode(claims(aud="kairos", iss="iss", exp=None), SECRET), "expired", "exp"
    yield "nbf_future", jose_jwt.encode(claims(aud="kairos", iss="iss", nbf=now() + 300), SECRET), "not_yet_valid", "nbf"
    yield "iat_future", jose_jwt.encode(claims(aud="kairos", iss="iss", iat=now() + 300), SECRET), "not_yet_valid", "iat"
    yield "wrong_iss", jose_jwt.encode(claims(aud="kairos", iss="evil"), SECRET), "wrong_issuer", "issuer"
    yield "wrong_aud", jose_jwt.encode(claims(aud="other", iss="iss"), SECRET), "wrong_audience", "audience"
    yield "missing_aud", jose_jwt.encode(claims(iss="iss"), SECRET), "wrong_audience", "audience"
    yield "missing_claim", jose_jwt.encode(claims(aud="kairos", iss="iss", role=None), SECRET), "missing_claim", "role"
    yield "bad_signature", head + "." + body + "." + sig[:-4] + ("AAAA" if sig[-4:] != "AAAA" else "BBBB"), "bad_signature", "signature"
    yield "wrong_secret", pyjwt.encode(claims(aud="kairos", iss="iss"), "z" * 40, algorithm="HS256"), "bad_signature", "signature"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_every_rejection(upstream, rsa):
    pub = public_pem(rsa)
    block = {"secret": SECRET, "algorithms": ["HS256", "RS256"], "public_key": pub, "issuer": "iss",
             "audience": "kairos", "required_claims": ["sub"]}
    async with inproc(cfg(upstream, block)) as c:
        for name, token, reason, words in _rejections(pub):
            if name == "missing_claim":
                token = jose_jwt.encode({k: v for k, v in claims(aud="kairos", iss="iss").items() if k != "sub"}, SECRET)
                words = "sub"
            before = failures("/api", reason)
            r = await c.get("/api", headers=bearer(token))
            assert r.status_code == 401, (name, r.text)
            body = r.json()
            assert body["type"] == "authentication_error"
            assert words in body["error"], (name, body["error"])
            assert token not in r.text
            assert all(seg not in r.text for seg in token.split(".") if len(seg) > 8)
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"', name
            assert failures("/api", reason) == before + 1, name
        # No token at all, or another scheme: a bare challenge.
        for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer "}):
            r = await c.get("/api", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


async def test_rs_only_config_rejects_hs_tokens(upstream, rsa):
    """The classic confusion: the gateway holds only an RSA public key; an HS256 token signed with it fails."""
    pub = public_pem(rsa)
    import hmac, hashlib
    signing_input = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64(claims())
    mac = hmac.new(pub.encode(), signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    async with inproc(cfg(upstream, {"algorithms": ["RS256"], "public_key": pub})) as c:
        r = await c.get("/api", headers=bearer(token))
        assert r.status_code == 401 and "HS256" in r.json()["error"]


# ----------------------------------------------------------------------------- forwarding
async def test_claim_headers_cannot_be_forged_on_any_route(upstream):
    block = {"secret": SECRET, "forward_claims": {"sub": "X-User-Id"}, "forward_token": False}
    token = jose_jwt.encode(claims(), SECRET)
    async with inproc(cfg(upstream, block)) as c:
        r = await c.get("/open", headers={"X-User-Id": "admin", "x-user-id": "root"})
        assert r.status_code == 200
        assert "x-user-id" not in echoed_headers(r)
        r = await c.get("/api", headers={**bearer(token), "X-User-Id": "admin"})
        h = echoed_headers(r)
        assert h["x-user-id"] == ["alice"]
        assert "authorization" not in h  # forward_token: false


# ----------------------------------------------------------------------------- cache & secrets
async def test_verified_token_cache(monkeypatch):
    config = parse_config({"jwt": {"secret": SECRET}}).jwt
    verifier = JwtVerifier(config, cache_size=2)
    calls = []
    real = jose_jwt.decode
    monkeypatch.setattr("kairos.auth.jwt.jwt.decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    tokens = [jose_jwt.encode(claims(sub=f"u{i}"), SECRET) for i in range(3)]
    for _ in range(3):
        assert (await verifier.verify(tokens[0]))["sub"] == "u0"
    assert len(calls) == 1
    await verifier.verify(tokens[1])
    await verifier.verify(tokens[2])  # evicts tokens[0] (LRU, size 2)
    assert len(verifier.cache) == 2
    await verifier.verify(tokens[0])
    assert len(calls) == 4
    # An entry dies at exp (+ leeway) even if still in the cache.
    claims_, _ = verifier.cache[tokens[0]]
    verifier.cache[tokens[0]] = (claims_, now() - 1)
    await verifier.verify(tokens[0])
    assert len(calls) == 5


def test_secret_never_in_repr():
    config = parse_config({"jwt": {"secret": SECRET}})
    assert SECRET not in repr(config) and SECRET not in str(config.jwt)
    assert SECRET not in repr(JwtVerifier(config.jwt))
    assert SECRET not in config.model_dump_json()
