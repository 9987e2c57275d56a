"""The upstream pool's parser and pool logic in process: property tests over an in-memory transport.

The transport feeds a scripted response to the connection, one `data_received` per
piece, so a response can be split at exact read boundaries; hypothesis picks the
splits and the bytes. Scripted upstreams on real sockets are in
tests/integration/test_h1_conformance.py.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.upstream.connection import Connection
from kairos.upstream.errors import UpstreamError
from kairos.upstream.pool import PoolLimits, UpstreamPool
from tests.h1_upstream import OK, read_body


# --------------------------------------------------------------------------- properties (in process)


class ScriptedTransport(asyncio.Transport):
    """Feeds `pieces` to the connection, one data_received per piece, once a request is written."""

    def __init__(self, protocol: Connection, pieces: list[bytes], close_after: bool) -> None:
        super().__init__()
        self.protocol = protocol
        self.pieces = pieces
        self.close_after = close_after
        self.closing = False
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1
        if self.written == 1:
            loop = asyncio.get_running_loop()
            for piece in self.pieces:
                loop.call_soon(self._feed, piece)
            if self.close_after:
                loop.call_soon(self.close)

    def _feed(self, piece: bytes) -> None:
        if not self.closing:
            self.protocol.data_received(piece)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class ScriptedPool(UpstreamPool):
    """The pool with connects replaced by ScriptedTransport: each connect plays the next script."""

    def __init__(self, scripts: list[tuple[list[bytes], bool]]) -> None:
        super().__init__()
        self.scripts = scripts

    async def _open(self, origin, connect_timeout):
        pieces, close_after = self.scripts.pop(0)
        conn = Connection(asyncio.get_running_loop())
        conn.connection_made(ScriptedTransport(conn, pieces, close_after))
        return conn


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


async def exchange(pool: UpstreamPool, method: str = "GET", timeout: float = 1.0) -> tuple[int, list, bytes] | str:
    """(status, headers, body), or the failure's kind; "timeout" when the upstream went silent."""
    try:
        async with asyncio.timeout(timeout):
            r = await pool.request("http", "up", 80, method, "/", [(b"host", b"up")])
            try:
                return r.status, r.raw_headers, await read_body(r)
            finally:
                r.release()
    except UpstreamError as exc:
        return exc.kind
    except TimeoutError:
        return "timeout"


VALID = [
    OK,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nT: x\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nX-B: 2\r\n\r\nnope!",
    b"HTTP/1.1 204 No Content\r\nX-C: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(VALID), st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_any_split_gives_the_same_response(response, cuts):
    async def run():
        whole = ScriptedPool([([response], True)])
        pieces = ScriptedPool([(split(response, cuts), True)])
        one = await exchange(whole)
        many = await exchange(pieces)
        assert one == many
        assert not isinstance(one, str)

    asyncio.run(run())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda a, b: a + b, st.sampled_from(VALID), st.binary(max_size=60)),
        st.builds(lambda a, b: a[:b], st.sampled_from(VALID), st.integers(0, 200)),
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    st.booleans(),
    st.sampled_from(["GET", "HEAD"]),
)
def test_random_bytes_never_raise_hang_or_stay_pooled(data, cuts, close_after, method):
    async def run():
        pool = ScriptedPool([(split(data, cuts), close_after)])
        result = await exchange(pool, method, 0.05)  # an answer, a failure kind or "timeout": never raises
        assert isinstance(result, (str, tuple))
        await asyncio.sleep(0)
        for origin in pool._origins.values():
            for conn in origin.idle:
                # Anything pooled is a connection whose one response was exactly what it sent.
                assert not conn.closed and not isinstance(result, str)
        await pool.aclose()

    asyncio.run(run())


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "router, expected",
    [
        ({"internal_path": "/a b"}, "routers[0].internal_path: internal_path '/a b' has a control character"),
        ({"internal_path": "/a\r\nX: y"}, "routers[0].internal_path: internal_path '/a\\r\\nX: y' has a control"),
        ({"internal_path": "/caf\u00e9"}, "routers[0].internal_path: internal_path '/café' has a control character, a space or a non-ASCII"),
        ({"host": "http://up stream"}, "routers[0].host: host 'http://up stream' has a control character"),
        ({"host": None, "port": None, "backends": [{"host": "http://a\u0000", "port": 1}]}, "routers[0].backends[0].host: host"),
        ({"host": "http://b\u00fccher.de"}, "routers[0].host: host 'http://bücher.de' has a control character, a space or a non-ASCII"),
        ({"connection_pool": {"max_connections": 0}}, "routers[0].connection_pool.max_connections"),
    ],
)
def test_config_refuses_what_could_not_be_written_upstream(router, expected):
    from kairos.config.loader import ConfigError, parse_config

    base = {"external_path": "/a", "internal_path": "/a", "methods": ["GET"], "host": "http://up", "port": 80}
    with pytest.raises(ConfigError) as info:
        parse_config({"routers": [{**base, **router}]}, use_env=False)
    assert info.value.problems[0].startswith(expected), info.value.problems


def test_connection_pool_block_defaults_and_router_override():
    from kairos.config.loader import parse_config

    base = {"external_path": "/a", "internal_path": "/a", "methods": ["GET"], "host": "http://up", "port": 80}
    config = parse_config(
        {"connection_pool": {"max_pending": 5}, "routers": [base, {**base, "external_path": "/b", "connection_pool": {"max_idle": 1}}]},
        use_env=False,
    )
    first, second = (config.policy(r, "connection_pool") for r in config.routers)
    assert (first.max_connections, first.max_pending, first.idle_timeout_ms) == (1024, 5, 60000)
    assert (second.max_idle, second.max_pending) == (1, 1024)
    assert (config.server.max_upstream_header_bytes, config.server.max_upstream_headers) == (65536, 100)


# --------------------------------------------------------------------------- hand-over


async def test_connection_closed_during_hand_over_is_never_written_to():
    # A released connection goes straight to the oldest waiter; the upstream's FIN lands
    # before that waiter runs. The waiter must connect anew, not write to the dead one.
    pool = ScriptedPool([([OK], False), ([OK], False)])
    limits = PoolLimits(max_connections=1)
    first = await pool.request("http", "up", 80, "GET", "/", [(b"host", b"up")], limits=limits)
    waiting = asyncio.ensure_future(pool.request("http", "up", 80, "GET", "/", [(b"host", b"up")], limits=limits))
    await asyncio.sleep(0)
    assert await first.read() == b"ok" and await first.read() == b""
    conn = first._conn
    first.release()  # handed to the waiter...
    conn.eof_received()  # ...which has not run yet when the upstream's FIN is read
    conn.connection_lost(None)
    second = await asyncio.wait_for(waiting, 1)
    assert second._conn is not conn
    assert conn.transport.written == 1
    assert await second.read() == b"ok"
    second.release()
    await pool.aclose()


# --------------------------------------------------------------------------- what the client is told


@pytest.mark.parametrize(
    "error, kind, status",
    [
        ("UpstreamProtocolError", "upstream", 502),
        ("UpstreamOverloaded", "upstream_overloaded", 503),
        ("InvalidUpstreamRequest", "bad_request", 400),
        ("UpstreamReset", "upstream", 502),
        ("UpstreamConnectTimeout", "timeout", 504),
    ],
)
def test_each_failure_maps_to_one_answer(error, kind, status):
    from kairos.config.models import BackendConfig
    from kairos.proxy.forward import upstream_failure
    from kairos.upstream import errors
    from kairos.upstream.backend import Backend

    backend = Backend(BackendConfig(host="http://127.0.0.1", port=9))
    answer = upstream_failure(getattr(errors, error)("details for the log"), backend, {"kairos.request_id": "r"})
    assert (answer.kind, answer.status) == (kind, status)
    assert "details" not in answer.message  # the client gets the kind of failure, not its details
