"""Asking DNS: A/AAAA addresses of a name, and SRV records, with their TTLs (dnspython).

Runs only in the discovery loops, never on the request path. dnspython does
not read /etc/hosts; that is why `localhost` is never handed to it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from kairos.discovery.config import DiscoveryConfig


class ResolutionError(Exception):
    """The name could not be resolved (the caller keeps the last good answer)."""


@dataclass(frozen=True, order=True)
class Endpoint:
    """One discovered server: its address, the port and weight to use, and the name
    that goes in its `Host` header."""

    ip: str
    port: int
    weight: int
    hostname: str


class DnsResolver:
    def __init__(self, config: DiscoveryConfig) -> None:
        system = config.nameservers is None
        self.resolver = dns.asyncresolver.Resolver(configure=system)
        if not system:
            self.resolver.nameservers = list(config.nameservers or ())
            self.resolver.port = config.port
        self.search = system  # the system's search domains make short names work (Kubernetes)
        self.resolver.timeout = config.timeout_ms / 1000
        self.resolver.lifetime = config.timeout_ms / 1000

    async def addresses(self, name: str) -> tuple[list[str], int]:
        """Every A and AAAA address of `name` (sorted) and the smallest TTL among them."""
        ips: list[str] = []
        ttl: int | None = None
        errors: list[str] = []
        answers = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"))
        for answer in answers:
            if isinstance(answer, str):
                errors.append(answer)
            elif answer is not None:
                ips.extend(r.address for r in answer)
                if answer.rrset is not None:
                    ttl = answer.rrset.ttl if ttl is None else min(ttl, answer.rrset.ttl)
        if not ips:
            detail = "; ".join(dict.fromkeys(errors)) if errors else "no A or AAAA records"
            raise ResolutionError(f"{name}: {detail}")
        return sorted(set(ips)), ttl or 0

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | str | None:
        """The answer, None when the name has no such records, or what went wrong."""
        try:
            return await self.resolver.resolve(name, rdtype, search=self.search)
        except dns.resolver.NoAnswer:
            return None
        except dns.exception.DNSException as exc:
            return _describe(exc)

    async def srv(self, name: str) -> tuple[list[Endpoint], int]:
        """The servers of SRV record `name`, lowest priority group only, each target
        resolved to its addresses; the smallest TTL seen."""
        try:
            answer = await self.resolver.resolve(name, "SRV", search=self.search)
        except dns.exception.DNSException as exc:
            raise ResolutionError(f"{name}: {_describe(exc)}") from None
        records = [r for r in answer if str(r.target) != "."]
        if not records:
            raise ResolutionError(f"{name}: no SRV targets")
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        lowest = min(r.priority for r in records)
        # Addresses sent along in the additional section save a query per target.
        glue: dict[str, list[str]] = {}
        for rrset in answer.response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                glue.setdefault(str(rrset.name), []).extend(r.address for r in rrset)
                ttl = min(ttl, rrset.ttl)
        endpoints: set[Endpoint] = set()
        failures: list[str] = []
        for r in records:
            if r.priority != lowest:
                continue
            target = str(r.target)
            ips = glue.get(target)
            if not ips:
                try:
                    ips, target_ttl = await self.addresses(target)
                except ResolutionError as exc:
                    failures.append(str(exc))
                    continue
                ttl = min(ttl, target_ttl)
            # RFC 2782: weight 0 means "very rarely"; a balancer weight must be positive.
            for ip in ips:
                endpoints.add(Endpoint(ip, r.port, max(r.weight, 1), target.rstrip(".")))
        if not endpoints:
            raise ResolutionError(f"{name}: no target could be resolved ({'; '.join(failures)})")
        return sorted(endpoints), ttl


def _describe(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "no such name (NXDOMAIN)"
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no nameserver answered"
    return f"{exc.__class__.__name__}: {exc}"
