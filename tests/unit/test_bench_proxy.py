"""The fault-injection proxy: order-preserving per-chunk delay that can be switched on and off at runtime."""

from __future__ import annotations

import asyncio
import time

import pytest

from cli.bench.proxy import DelayProxy, DelayQueue

pytestmark = pytest.mark.unit


async def test_each_chunk_is_due_at_arrival_plus_the_delay_in_force_and_never_overtakes():
    now = [10.0]
    queue = DelayQueue(clock=lambda: now[0])
    assert queue.put(b"a", 0.2) == pytest.approx(10.2)
    now[0] = 10.05
    assert queue.put(b"b", 0.0) == pytest.approx(10.2)  # delay switched off: still after "a"
    now[0] = 10.5
    assert queue.put(b"c", 0.0) == pytest.approx(10.5)  # then straight through


async def test_the_queue_hands_chunks_out_in_order():
    queue = DelayQueue()
    for chunk in (b"1", b"2", b"3"):
        queue.put(chunk, 0.0)
    assert [await queue.get() for _ in range(3)] == [b"1", b"2", b"3"]


@pytest.fixture
async def echo_through_proxy():
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = DelayProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    port = await proxy.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield proxy, reader, writer
    finally:
        writer.close()
        await proxy.stop()
        server.close()
        await server.wait_closed()


async def _round_trip(reader, writer, payload: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    writer.write(payload)
    await writer.drain()
    data = await reader.readexactly(len(payload))
    return data, time.monotonic() - started


async def test_traffic_passes_intact_with_the_delay_off_on_and_off_again(echo_through_proxy):
    proxy, reader, writer = echo_through_proxy
    assert (await _round_trip(reader, writer, b"before"))[0] == b"before"
    proxy.delay = 0.15
    data, took = await _round_trip(reader, writer, b"delayed" * 1000)
    assert data == b"delayed" * 1000
    assert took >= 0.15  # a lower bound (the delay is a sleep), not a performance assertion
    proxy.delay = 0.0
    assert (await _round_trip(reader, writer, b"after"))[0] == b"after"


async def test_a_connection_to_a_dead_upstream_is_closed():
    with_nothing = DelayProxy("127.0.0.1", 1)  # nothing listens on port 1
    port = await with_nothing.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
    finally:
        await with_nothing.stop()
