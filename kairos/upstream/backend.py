"""One upstream server (a Backend) and its live state, kept across reloads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kairos.config.models import BackendConfig
from kairos.observability.metrics import BACKEND_UP

if TYPE_CHECKING:
    from kairos.upstream.breaker import CircuitBreaker, NoBreaker


class Backend:
    """One upstream server. Its live state (in-flight count, health, ejection,
    breaker) survives reloads: the runtime reuses the Backend object of an
    address present in both configs.

    `available` is the one flag the balancers read on the hot path: healthy per
    active checks, not ejected by outlier detection and not drained by an
    operator (admin API: no new requests, in-flight ones finish). It is
    recomputed only when one of those changes (`update_available`)."""

    __slots__ = (
        "address",
        "scheme",
        "host",
        "connect_host",
        "port",
        "origin",
        "netloc",
        "host_header",
        "health_check_path",
        "in_flight",
        "healthy",
        "drained",
        "available",
        "ejected_until",
        "ejections",
        "returned_at",
        "od_failures",
        "breaker",
        "_up",
    )

    def __init__(self, config: BackendConfig, hostname: str | None = None) -> None:
        """`hostname`: the name a DNS-discovered backend (config.host is its address) is known by;
        it goes in the `Host` header."""
        self.address = config.address
        scheme, _, host = config.host.partition("://")
        # WebSocket backends are reached over HTTP(S) for the handshake.
        self.scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
        self.host = host
        self.connect_host = host.strip("[]")  # an IPv6 literal is written [::1] in URLs only
        self.port = config.port
        default_port = 443 if self.scheme == "https" else 80
        self.netloc = host if self.port == default_port else f"{host}:{self.port}"
        self.origin = f"{self.scheme}://{self.netloc}"
        named = self.netloc if hostname is None else hostname if self.port == default_port else f"{hostname}:{self.port}"
        self.host_header = named.encode("idna" if not named.isascii() else "ascii")
        self.health_check_path = config.health_check_path
        self.in_flight = 0
        # Active health checking's verdict (True until probes say otherwise).
        self.healthy = True
        self.drained = False
        self.available = True
        # Outlier detection: 0.0 = not ejected, else the clock time it comes back.
        self.ejected_until = 0.0
        self.ejections = 0
        self.returned_at = 0.0
        self.od_failures = 0
        self.breaker: CircuitBreaker | NoBreaker | None = None
        # Cached metric children (labels() once, not per request).
        self._up = BACKEND_UP.labels(self.address)
        self._up.set(1)

    def update_available(self) -> None:
        available = self.healthy and not self.ejected_until and not self.drained
        if available != self.available:
            self.available = available
            self._up.set(1 if available else 0)

    def __repr__(self) -> str:
        return f"Backend({self.address})"
