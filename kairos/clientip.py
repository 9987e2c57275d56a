"""Who the client is: the socket peer, or, behind trusted proxies, the rightmost untrusted X-Forwarded-For address.

A client can never choose its own address (and with it its rate-limit key) by
sending X-Forwarded-For to a gateway that does not trust its peer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kairos.types import Scope

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientIdentity:
    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self.trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in trusted_proxies)

    def is_trusted(self, ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def resolve(self, scope: Scope) -> str:
        """The client's IP for policy and logs; also sets scope["kairos.forwarded_proto"] from a trusted proxy."""
        peer = scope.get("client")
        peer_ip = peer[0] if peer else ""
        if not self.trusted or not self.is_trusted(peer_ip):
            return peer_ip
        chain: list[str] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                chain.extend(part.strip() for part in value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
                if proto in ("http", "https"):
                    scope["kairos.forwarded_proto"] = proto
        # Walk from the right: the first address not in a trusted proxy is the client.
        for candidate in reversed(chain):
            if not candidate:
                continue
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                return peer_ip  # a garbled chain proves nothing beyond the peer
            if not self.is_trusted(candidate):
                return candidate
        return chain[0] if chain and chain[0] else peer_ip
