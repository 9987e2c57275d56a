"""What templates and conditions read from a request, looked up lazily.

One RequestView per request on a route with a transformation; each value is
computed on first use and kept. It reads the request as the client sent it (after the auth
layer's own header changes), never the edits being made.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote_plus

import orjson

from kairos.types import Scope


def raw_path(scope: Scope) -> str:
    """The path as the client sent it (percent-encoding kept), without the query."""
    raw = scope.get("raw_path")
    if raw:
        return raw.decode("latin-1")
    return quote(scope["path"], safe="/!$&'()*+,;=:@-._~%")


class RequestView:
    __slots__ = ("scope", "route_name", "params", "headers", "_headers", "_query", "_path")

    def __init__(self, scope: Scope, route_name: str) -> None:
        self.scope = scope
        self.route_name = route_name
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]  # before any edit
        self.params: dict[str, str] = scope.get("kairos.params") or {}
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None
        self._path: str | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = raw_path(self.scope)
        return self._path

    @property
    def method(self) -> str:
        return self.scope["method"]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lowercase), decoded as latin-1; None when absent."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            for n, v in self.headers:
                key = n.decode("latin-1")
                if key not in headers:
                    headers[key] = v.decode("latin-1")
        return headers.get(name)

    def query(self, name: str) -> str | None:
        """The first raw value of query parameter `name` (names compared decoded); None when absent."""
        query = self._query
        if query is None:
            query = self._query = {}
            qs = self.scope.get("query_string") or b""
            for item in qs.decode("latin-1").split("&"):
                if not item:
                    continue
                key, _, value = item.partition("=")
                key = unquote_plus(key)
                if key not in query:
                    query[key] = value
        return query.get(name)

    def claim(self, name: str) -> str:
        claims = self.scope.get("kairos.user") or {}
        return claim_text(claims.get(name))

    def client_ip(self) -> str:
        ip = self.scope.get("kairos.client_ip")
        if ip:
            return str(ip)
        client = self.scope.get("client")
        return client[0] if client else ""


def claim_text(value: Any) -> str:
    """A claim as text: strings as they are, lists of scalars comma-joined, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return ",".join(str(v) for v in value)
    return orjson.dumps(value).decode()
