"""A real DNS server on 127.0.0.1 (UDP) for discovery tests, built with dnspython's message API.

    dns = DnsServer().start()           # dns.port
    dns.set("users.test", "A", ["127.0.0.1"], ttl=30)
    dns.set("_http._tcp.users.test", "SRV", ["10 5 8080 a.users.test."])
    dns.fail = "servfail"               # or "drop" (no answer: the client times out), or None
    dns.queries                         # [(name, type), ...] as received
    dns.stop()

Names without records answer NXDOMAIN; a known name asked for another type answers
NOERROR with no records (NODATA), as a real server does.
"""

from __future__ import annotations

import asyncio
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[list[str], int]] = {}
        self.fail: str | None = None
        self.queries: list[tuple[str, str]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transport: asyncio.DatagramTransport | None = None

    # ------------------------------------------------------------------ records
    def set(self, name: str, rdtype: str, values: list[str], ttl: int = 30) -> None:
        self.records[(_fqdn(name), rdtype.upper())] = (list(values), ttl)

    def remove(self, name: str, rdtype: str) -> None:
        self.records.pop((_fqdn(name), rdtype.upper()), None)

    def answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        question = query.question[0]
        name = question.name.to_text()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name.rstrip("."), rdtype))
        if self.fail == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.fail == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        found = self.records.get((name, rdtype))
        if found is not None:
            values, ttl = found
            response.answer.append(dns.rrset.from_text_list(name, ttl, "IN", rdtype, values))
        elif not any(key[0] == name for key in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DnsServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            transport, _ = loop.run_until_complete(
                loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=("127.0.0.1", 0))
            )
            self._transport = transport
            self.port = transport.get_extra_info("sockname")[1]
            ready.set()
            loop.run_forever()
            transport.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="test-dns", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def _fqdn(name: str) -> str:
    return name if name.endswith(".") else name + "."
