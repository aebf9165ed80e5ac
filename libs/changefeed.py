"""Change feeds: "these customers changed" pushed to every live watcher, so readers can cache with exact invalidation.

A service that owns customer data (identity, profile) publishes the ids it changed right after each commit; its
`WatchChanges` RPC streams them to subscribers (the decision service's caches). The contract between the two:

- the first message of a stream is empty and means "subscribed": from then on every change is delivered;
- a watcher that falls too far behind is disconnected rather than silently skipped, and the stream ends on
  shutdown: a subscriber must drop everything it cached whenever its stream is not live.

A feed is in-process: it sees only the changes its own process commits. Where replicas share a PostgreSQL database,
`PostgresRelay` carries every replica's commits to every replica's feed (NOTIFY is sent at commit, in commit order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.cancellation import stop_task

log = logging.getLogger("nextbest.changefeed")

#: Pending ids per watcher before it counts as too slow and is disconnected (it then resets its cache).
MAX_PENDING = 100_000
#: Most ids per streamed message.
MAX_BATCH = 4_096
_CLOSED = None
#: Bytes per NOTIFY payload (PostgreSQL's limit is 8,000).
_MAX_PAYLOAD = 7_000


class ChangeFeed:
    """In-process fan-out of changed customer ids to the open `watch()` streams."""

    def __init__(self, max_pending: int = MAX_PENDING, *, open: bool = True) -> None:
        self._max_pending = max_pending
        self._watchers: set[asyncio.Queue[str | None]] = set()
        self._closed = False
        #: False while the feed cannot vouch for seeing every change (its relay is down): streams end at once.
        self._open = open

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def publish(self, customer_ids: Iterable[str]) -> None:
        """Queue the ids for every watcher (call after the change is committed)."""
        if not self._watchers:
            return
        ids = [customer_id for customer_id in customer_ids if customer_id]
        for queue in list(self._watchers):
            if queue.qsize() + len(ids) > self._max_pending:
                self._disconnect(queue)
                continue
            for customer_id in ids:
                queue.put_nowait(customer_id)

    def close(self) -> None:
        """End every stream (shutdown): subscribers reset their caches and reconnect elsewhere or later."""
        self._closed = True
        self.suspend()

    def suspend(self) -> None:
        """Changes may be missed from now on: end every stream and refuse new ones until `resume`."""
        self._open = False
        for queue in list(self._watchers):
            self._disconnect(queue)

    def resume(self) -> None:
        """Every change is seen again: new streams are accepted (unless closed)."""
        self._open = not self._closed

    def _disconnect(self, queue: asyncio.Queue[str | None]) -> None:
        self._watchers.discard(queue)
        queue.put_nowait(_CLOSED)  # unbounded queue: never raises

    async def watch(self) -> AsyncIterator[list[str]]:
        """Yield `[]` once subscribed, then batches of changed ids until disconnected or closed."""
        if not self._open:
            return
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            yield []
            while True:
                first = await queue.get()
                if first is _CLOSED:
                    return
                batch = {first}
                while not queue.empty() and len(batch) < MAX_BATCH:
                    item = queue.get_nowait()
                    if item is _CLOSED:
                        yield sorted(batch)
                        return
                    batch.add(item)
                yield sorted(batch)
        finally:
            self._watchers.discard(queue)


_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


async def notify(connection: AsyncConnection, channel: str, ids: Sequence[str], origin: str = "") -> None:
    """Announce changed ids on a PostgreSQL channel inside the caller's transaction (delivered only if it commits).
    `origin` names the announcing process, so that it can tell its own announcements from other replicas'.

    A payload is a JSON array, the origin then the ids: any id survives the trip (a line break, non-ASCII), and the
    size is counted in encoded bytes, which is what PostgreSQL limits. Ids are short (the services cap them at 128
    characters), so none is ever too large for a payload."""
    await notify_items(connection, channel, [orjson.dumps(origin)], [orjson.dumps(value) for value in dict.fromkeys(ids)])


async def notify_items(connection: AsyncConnection, channel: str, head: Sequence[bytes], items: Iterable[bytes]) -> None:
    """NOTIFY JSON-encoded `items` in as few payloads as fit, each a JSON array of the `head` values (the origin
    first) then items. An item too large for any payload is not sent."""
    base = sum(len(value) + 1 for value in head) + 1
    chunk, size = list(head), base
    for encoded in items:
        if base + len(encoded) + 1 > _MAX_PAYLOAD:
            continue
        if len(chunk) > len(head) and size + len(encoded) + 1 > _MAX_PAYLOAD:
            await _send(connection, channel, chunk)
            chunk, size = list(head), base
        chunk.append(encoded)
        size += len(encoded) + 1
    if len(chunk) > len(head):
        await _send(connection, channel, chunk)


async def _send(connection: AsyncConnection, channel: str, encoded: list[bytes]) -> None:
    payload = b"[" + b",".join(encoded) + b"]"
    await connection.execute(_NOTIFY, {"channel": channel, "payload": payload.decode()})


class PostgresRelay:
    """LISTENs on a channel and publishes what every process `notify`-ed there into a local feed.

    The feed is open only while the LISTEN connection is up: when it drops, every stream ends (subscribers reset
    their caches, since changes may be missed) until listening resumes.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        feed: ChangeFeed,
        retry_seconds: float = 1.0,
        *,
        origin: str | None = None,
        on_notify: Callable[[list[str]], None] | None = None,
        also: Mapping[str, Callable[[list[Any]], None]] | None = None,
    ) -> None:
        self._engine = engine
        self._channel = channel
        self._feed = feed
        self._retry_seconds = retry_seconds
        #: Set when this process publishes its own changes to the feed at commit: its announcements are skipped.
        self._origin = origin
        #: Called with the ids of every other process's announcement (e.g. to drop them from a cache).
        self._on_notify = on_notify
        #: Further channels heard on the same connection (payloads as `notify_items` sends them: each callback gets
        #: the values after the origin, other processes' only). PostgreSQL delivers a transaction's notifications
        #: one after another in the order sent, across channels (each a callback of its own: other work may run
        #: between them).
        self._also = dict(also or {})
        #: How this process's own payloads begin (the origin is their first value): skipped before any parsing.
        self._own = orjson.dumps([origin])[:-1].decode() if origin is not None else None
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self._sessions = 0
        #: Changes once per LISTEN session and is None between sessions: a cache filled in an earlier session,
        #: or while not listening, may have missed changes (see services.profile.storage.ReadCache).
        self.session: int | None = None

    def start(self) -> None:
        self._feed.suspend()
        self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._feed.suspend()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception as exc:  # noqa: BLE001 - any failure means "not listening": suspend, retry
                log.warning("%s relay lost: %s", self._channel, exc)
            self.listening.clear()
            self._feed.suspend()
            await asyncio.sleep(self._retry_seconds)

    async def _listen(self) -> None:
        lost = asyncio.Event()
        async with self._engine.connect() as connection:
            raw = (await connection.get_raw_connection()).driver_connection  # asyncpg.Connection

            def values(payload: str) -> list[Any] | None:
                """The payload's values after the origin; None for this process's own (published at commit)."""
                return None if self._own is not None and payload.startswith(self._own) else orjson.loads(payload)[1:]

            def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
                ids = values(payload)
                if ids is None:
                    return
                self._feed.publish(ids)
                if self._on_notify is not None:
                    self._on_notify(ids)

            def on_also(_conn: object, _pid: int, channel: str, payload: str) -> None:
                rest = values(payload)
                if rest is not None:
                    self._also[channel](rest)

            raw.add_termination_listener(lambda _conn: lost.set())
            await raw.add_listener(self._channel, on_notify)
            for channel in self._also:
                await raw.add_listener(channel, on_also)
            try:
                self._feed.resume()
                self._sessions += 1
                self.session = self._sessions
                self.listening.set()
                log.info("%s relay listening", self._channel)
                while not lost.is_set() and not raw.is_closed():
                    try:
                        await asyncio.wait_for(lost.wait(), timeout=5.0)
                    except TimeoutError:
                        await raw.execute("SELECT 1")  # a dead peer shows up here, not as a termination
            finally:
                self.session = None
                self._feed.suspend()
                # Never hand a LISTENing (or dead) connection back to the pool: the pool would not notice either.
                await connection.invalidate()
        raise ConnectionError("LISTEN connection closed")
