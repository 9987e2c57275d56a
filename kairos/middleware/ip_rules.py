"""`ip_allow` / `ip_deny`: CIDR lists, top level as the default, per route as an override.

Checked against scope["kairos.client_ip"] (the peer, or the trusted_proxies
answer). `ip_deny` wins over `ip_allow`; with `ip_allow` set, an address in none
of its networks is refused. A refusal is 403 `forbidden`.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from typing import TYPE_CHECKING

from kairos.errors import GatewayError
from kairos.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from kairos.deps import LayerDeps, Wrap
    from kairos.route import CompiledRoute

CACHE_SIZE = 4096


def _networks(cidrs: list[str] | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    if cidrs is None:
        return None
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _contains(networks, addr) -> bool:
    if addr.version == 6 and addr.ipv4_mapped is not None:
        mapped = addr.ipv4_mapped
        if any(mapped in n for n in networks):
            return True
    return any(addr in n for n in networks)


class IPRules:
    def __init__(self, app: ASGIApp, allow, deny) -> None:
        self.app = app
        self.allow = allow
        self.deny = deny
        self._decided: dict[str, bool] = {}

    def permitted(self, ip: str) -> bool:
        decided = self._decided.get(ip)
        if decided is not None:
            return decided
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            ok = self.allow is None and not self.deny
        else:
            ok = not (self.deny and _contains(self.deny, addr))
            if ok and self.allow is not None:
                ok = _contains(self.allow, addr)
        if len(self._decided) >= CACHE_SIZE:
            self._decided.clear()
        self._decided[ip] = ok
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.permitted(scope.get("kairos.client_ip", "")):
            raise GatewayError("forbidden", "access from this address is not allowed")
        await self.app(scope, receive, send)


def ip_rules_layer(route: CompiledRoute, deps: LayerDeps) -> Wrap | None:
    allow = _networks(route.policy("ip_allow"))
    deny = _networks(route.policy("ip_deny"))
    if allow is None and not deny:
        return None
    return partial(IPRules, allow=allow, deny=deny)
