"""A TCP proxy whose client-to-server direction can be delayed at runtime (fault injection without touching the
services: the decision service's inventory target points at the proxy).

gRPC runs over HTTP/2: holding back every chunk read from the client side delays every call's request (and the
client's pings and window updates) by that much. Each chunk is forwarded at (arrival + the delay in force when
it arrived), in order, so the delay adds latency without limiting throughput; switching it off lets the queued
chunks drain at their due times, then traffic flows straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

CHUNK = 65_536


class DelayQueue:
    """Chunks with the instant each may be forwarded: arrival + the delay in force then, never before an earlier
    chunk (order is the stream's)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._items: deque[tuple[float, bytes]] = deque()
        self._ready = asyncio.Event()
        self._last_due = 0.0

    def put(self, data: bytes, delay: float) -> float:
        due = max(self.clock() + delay, self._last_due)
        self._last_due = due
        self._items.append((due, data))
        self._ready.set()
        return due

    async def get(self) -> bytes:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        due, data = self._items.popleft()
        wait = due - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        return data


class DelayProxy:
    """Listens on host:port and forwards each connection to the upstream; `delay` (seconds) applies to the
    client-to-upstream direction and may be changed at any time."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()  # the upstream is down: the client sees the connection fail, as it would
            self._connections.discard(task)
            return
        pipes = [
            asyncio.ensure_future(self._delayed(client_reader, upstream_writer)),
            asyncio.ensure_future(self._straight(upstream_reader, client_writer)),
        ]
        try:
            # Both directions until both ended (half-closes pass through), or until one side fails.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)  # a reset connection is not our error
            for writer in (client_writer, upstream_writer):
                writer.close()
            self._connections.discard(task)

    async def _delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue = DelayQueue()

        async def forward() -> None:
            while True:
                data = await queue.get()
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        forwarder = asyncio.ensure_future(forward())
        try:
            while data := await reader.read(CHUNK):
                queue.put(data, self.delay)
            queue.put(b"", self.delay)  # end of stream, after everything before it
            await forwarder
        finally:
            forwarder.cancel()
        with contextlib.suppress(OSError):
            writer.write_eof()

    @staticmethod
    async def _straight(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
