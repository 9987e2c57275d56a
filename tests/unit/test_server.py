"""The greedy accept loop: every connection waiting in the kernel's queue is taken in one wake-up."""

from __future__ import annotations

import asyncio
import socket

from kairos.server import GreedyAcceptor


class Counting(asyncio.Protocol):
    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made += 1
        transport.write(b"hi")


async def test_one_wake_up_accepts_every_waiting_connection():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]  # all queued by the kernel
    acceptor = GreedyAcceptor(loop, listener, Counting, batch=512, owns_socket=True)
    loop.remove_reader(listener.fileno())  # drive it by hand: exactly one wake-up
    Counting.made = 0
    acceptor._accept()
    for _ in range(50):
        await asyncio.sleep(0.01)
        if Counting.made == 200:
            break
    assert Counting.made == 200
    for c in clients:
        c.settimeout(5)
        assert c.recv(2) == b"hi"
        c.close()
    acceptor.close()
    assert listener.fileno() == -1  # it owned the socket


async def made_at_least(n: int) -> None:
    """Wait (bounded) for the accepted connections' protocols to be made: they are, a loop turn later."""
    for _ in range(500):
        if Counting.made >= n:
            return
        await asyncio.sleep(0.001)


async def test_batch_bounds_one_wake_up():
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    acceptor = GreedyAcceptor(loop, listener, Counting, batch=4, owns_socket=False)
    loop.remove_reader(listener.fileno())
    Counting.made = 0
    acceptor._accept()
    await made_at_least(4)
    assert Counting.made == 4
    acceptor._accept()
    acceptor._accept()
    await made_at_least(10)
    assert Counting.made == 10
    acceptor.close()
    assert listener.fileno() != -1  # not its socket to close
    listener.close()
    for c in clients:
        c.close()
