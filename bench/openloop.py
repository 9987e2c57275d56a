"""Open-loop load at a fixed rate: latency measured from each request's *scheduled* time.

A closed-loop tool (wrk) waits for an answer before sending the next request on a
connection, so a slow server also slows the load and queueing never shows
(coordinated omission). Here request i is due at start + i/rate whatever happened
before; its latency counts from that moment.

    python bench/openloop.py --url http://127.0.0.1:5900/api/users/42 --rate 1000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    async def exchange(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return status


async def run(url: str, rate: float, duration: float, timeout: float = 5.0) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    idle: list[Connection] = []
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}

    async def one(due: float) -> None:
        nonlocal errors
        conn = None
        while idle:
            conn = idle.pop()
            # Servers close idle keep-alive connections (uvicorn after 5 s): a load
            # generator that reuses one of those measures its own race, not the server.
            if time.perf_counter() - conn.idle_since < 2.0:
                break
            conn.writer.close()
            conn = None
        try:
            if conn is None:
                reader, writer = await asyncio.open_connection(host, port)
                conn = Connection(reader, writer)
            status = await asyncio.wait_for(conn.exchange(request), timeout)
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
            conn.idle_since = time.perf_counter()
            idle.append(conn)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            if conn is not None:
                conn.writer.close()

    total = int(rate * duration)
    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "rate": rate,
        "duration_s": duration,
        "sent": total,
        "ok": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "p50_ms": round(pct(50), 3),
        "p99_ms": round(pct(99), 3),
        "p999_ms": round(pct(99.9), 3),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=10)
    args = parser.parse_args()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        print(json.dumps(runner.run(run(args.url, args.rate, args.duration))))


if __name__ == "__main__":
    main()
