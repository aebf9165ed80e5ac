"""Change feeds: "these customers changed" pushed to every live watcher, so readers can cache with exact invalidation.

A service that owns customer data (identity, profile) publishes the ids it changed right after each commit; its
`WatchChanges` RPC streams them to subscribers (the decision service's caches). The contract between the two:

- the first message of a stream is empty and means "subscribed": from then on every change is delivered;
- a watcher that falls too far behind is disconnected rather than silently skipped, and the stream ends on
  shutdown: a subscriber must drop everything it cached whenever its stream is not live.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

#: Pending ids per watcher before it counts as too slow and is disconnected (it then resets its cache).
MAX_PENDING = 100_000
#: Most ids per streamed message.
MAX_BATCH = 4_096
_CLOSED = None


class ChangeFeed:
    """In-process fan-out of changed customer ids to the open `watch()` streams."""

    def __init__(self, max_pending: int = MAX_PENDING) -> None:
        self._max_pending = max_pending
        self._watchers: set[asyncio.Queue[str | None]] = set()
        self._closed = False

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
        for queue in list(self._watchers):
            self._disconnect(queue)

    def _disconnect(self, queue: asyncio.Queue[str | None]) -> None:
        self._watchers.discard(queue)
        queue.put_nowait(_CLOSED)  # unbounded queue: never raises

    async def watch(self) -> AsyncIterator[list[str]]:
        """Yield `[]` once subscribed, then batches of changed ids until disconnected or closed."""
        if self._closed:
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
