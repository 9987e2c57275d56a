"""Verifying bearer tokens with python-jose, and the verified-token cache.

Checks, in this order (each failure has a `reason`, the metric label, and a
message that says what was wrong without echoing the token):

    too_large       token above 8 KiB (never parsed)
    malformed       not three base64url segments / header or payload not JSON
    algorithm       `alg` missing, `none`, or not in `algorithms` (the token's own
                    header is never trusted beyond that list)
    unknown_key     no key for the token: JWKS has no such `kid`
    bad_signature   signature does not verify with the key for that algorithm
                    (an HS* token is only ever checked against `secret`, never
                    against a public key: no algorithm confusion)
    expired         `exp` missing or past (leeway applies)
    not_yet_valid   `nbf` or `iat` in the future (leeway applies)
    wrong_issuer / wrong_audience / missing_claim / invalid_claims

A verified token is cached (bounded LRU keyed by the token string) until its
`exp` (+ leeway), so a client reusing its token costs a dict lookup.
"""

from __future__ import annotations

import binascii
import base64
import time
from collections import OrderedDict
from typing import Any

import orjson
from jose import jwk, jwt
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError

from kairos.auth.jwks import JwksFetcher
from kairos.config.models import JwtConfig

MAX_TOKEN_BYTES = 8 * 1024
CACHE_SIZE = 10_000


class AuthFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _is_b64url(segment: str) -> bool:
    return all(c.isalnum() or c in "-_" for c in segment) and segment.isascii()


class JwtVerifier:
    """One per distinct `jwt` block; shared by every protected route compiled from it."""

    def __init__(self, config: JwtConfig, jwks: JwksFetcher | None = None, cache_size: int = CACHE_SIZE) -> None:
        self.config = config
        self.algorithms = frozenset(config.algorithms)
        self.jwks = jwks
        self.leeway = config.leeway_seconds
        self.issuer = config.issuer
        self.audience = config.audience
        self.required = tuple(config.required_claims)
        self._secret = config.secret.get_secret_value() if config.secret is not None else None
        self._hmac_keys: dict[str, Any] = {}
        self._public_keys: dict[str, Any] = {}
        self._public_pem = config.public_key
        self._options = {
            "require_exp": True,
            "require_aud": config.audience is not None,
            "require_iss": config.issuer is not None,
            "verify_aud": config.audience is not None,
            "leeway": config.leeway_seconds,
        }
        self.cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()
        self.cache_size = cache_size
        self._jwks_generation = jwks.generation if jwks is not None else 0

    def __repr__(self) -> str:  # never the secret
        return f"JwtVerifier(algorithms={sorted(self.algorithms)}, issuer={self.issuer!r}, audience={self.audience!r})"

    # ------------------------------------------------------------------ the hot path
    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or AuthFailure."""
        jwks = self.jwks
        if jwks is not None and jwks.generation != self._jwks_generation:
            # The key set changed (rotation): tokens verified with a dropped key must not live on.
            self.cache.clear()
            self._jwks_generation = jwks.generation
        hit = self.cache.get(token)
        if hit is not None:
            claims, expires = hit
            if time.time() < expires:
                self.cache.move_to_end(token)
                return claims
            del self.cache[token]
        claims = await self._verify_uncached(token)
        exp = float(claims["exp"]) + self.leeway
        self.cache[token] = (claims, exp)
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return claims

    # ------------------------------------------------------------------ the full check
    async def _verify_uncached(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthFailure("too_large", f"token is larger than {MAX_TOKEN_BYTES} bytes")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts[:2]) or not all(_is_b64url(p) for p in parts):
            raise AuthFailure("malformed", "token is malformed: expected three base64url segments")
        try:
            header = _b64json(parts[0])
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            raise AuthFailure("malformed", "token is malformed: header is not base64url JSON") from None
        if not isinstance(header, dict):
            raise AuthFailure("malformed", "token is malformed: header is not a JSON object")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthFailure("algorithm", "unsigned tokens (alg none) are not accepted")
        if alg not in self.algorithms:
            raise AuthFailure("algorithm", f"algorithm {alg[:16]} is not accepted")
        if not parts[2]:
            raise AuthFailure("malformed", "token is malformed: signature segment is empty")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed", "token is malformed: kid is not a string")
        key = await self._key(alg, kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options=dict(self._options),
            )
        except ExpiredSignatureError:
            raise AuthFailure("expired", "token has expired") from None
        except JWTClaimsError as exc:
            raise _claims_failure(str(exc)) from None
        except JOSEError as exc:
            text = str(exc)
            if "Signature verification failed" in text:
                raise AuthFailure("bad_signature", "token signature is invalid") from None
            if 'missing required key "exp"' in text:
                raise AuthFailure("expired", "token has no expiry (exp)") from None
            if 'missing required key "aud"' in text:
                raise AuthFailure("wrong_audience", "token has no audience (aud)") from None
            if 'missing required key "iss"' in text:
                raise AuthFailure("wrong_issuer", "token has no issuer (iss)") from None
            if "Invalid payload" in text or "Invalid header" in text or "Invalid crypto" in text:
                raise AuthFailure("malformed", "token is malformed") from None
            raise AuthFailure("invalid", "token is invalid") from None
        if not isinstance(claims, dict):
            raise AuthFailure("malformed", "token payload is not a JSON object")
        now = time.time()
        iat = claims.get("iat")
        if iat is not None:
            if not isinstance(iat, (int, float)) or isinstance(iat, bool):
                raise AuthFailure("invalid_claims", "iat is not a number")
            if iat > now + self.leeway:
                raise AuthFailure("not_yet_valid", "token is issued in the future (iat)")
        if not isinstance(claims.get("exp"), (int, float)) or isinstance(claims.get("exp"), bool):
            raise AuthFailure("invalid_claims", "exp is not a number")
        for name in self.required:
            if name not in claims:
                raise AuthFailure("missing_claim", f"token lacks the required claim '{name}'")
        return claims

    async def _key(self, alg: str, kid: str | None) -> Any:
        if alg.startswith("HS"):
            # HMAC only ever with the shared secret: a public key is never an HMAC key.
            key = self._hmac_keys.get(alg)
            if key is None:
                if self._secret is None:
                    raise AuthFailure("algorithm", f"algorithm {alg} is not accepted")
                key = jwk.construct(self._secret.encode(), alg)
                self._hmac_keys[alg] = key
            return key
        if self.jwks is not None:
            key = await self.jwks.key_for(kid, alg)
            if key is not None:
                return key
            if self._public_pem is None:
                raise AuthFailure("unknown_key", "no signing key known for this token (kid)")
        key = self._public_keys.get(alg)
        if key is None:
            try:
                key = jwk.construct(self._public_pem, alg)
            except JOSEError:
                raise AuthFailure("algorithm", f"algorithm {alg} does not fit the configured public key") from None
            self._public_keys[alg] = key
        return key


def _claims_failure(text: str) -> AuthFailure:
    low = text.lower()
    if "audience" in low:
        return AuthFailure("wrong_audience", "token audience (aud) is not accepted")
    if "issuer" in low:
        return AuthFailure("wrong_issuer", "token issuer (iss) is not accepted")
    if "nbf" in low or "not yet valid" in low:
        return AuthFailure("not_yet_valid", "token is not valid yet (nbf)")
    if "expir" in low:
        return AuthFailure("expired", "token has expired")
    return AuthFailure("invalid_claims", "token claims are invalid")
