"""JWT verification (python-jose), the verified-token cache and the JWKS fetcher."""

from kairos.auth.jwks import JwksFetcher
from kairos.auth.jwt import AuthFailure, JwtVerifier

__all__ = ["AuthFailure", "JwksFetcher", "JwtVerifier"]
