"""Read-through caches of what a service reads about customers from another service, kept exact by the owner's
change feed (the decision's resolutions, consent, profiles and stock; the profile's resolutions of identifiers).

Identity, profile and inventory each stream the ids they changed (`WatchChanges`, right after each commit). A
`CustomerCache` serves entries only while its feed's stream is live, drops a customer's entries when that customer
changes, and never stores a value whose fetch raced a change to the same customer (the value may predate it). When
the stream breaks, the cache empties and is bypassed until a new stream says "subscribed". So a cached answer is
never older than the last change its owner committed, give or take the time a message takes to arrive.

`max_age_seconds` bounds the age of an entry for what changes without any event: time-relative features
(days since the last order) drift, so profiles are re-read now and then. Identity's answers (resolutions, consent)
do not drift with time: their caches have no age bound, only the LRU's (None), since an age bound there re-read
every customer seen less often than it, which under a long-tailed popularity was half the resolutions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from libs.cancellation import stop_task

log = logging.getLogger("nextbest.customer_cache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Invalidation batches remembered to judge whether an in-flight fetch raced a change.
_HISTORY = 256
#: Reconnect back-off bounds after a change stream fails.
_RETRY_MIN_SECONDS = 0.2
_RETRY_MAX_SECONDS = 5.0


def _same_customer(key: object, value: object) -> str | None:
    return key if isinstance(key, str) else None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class CustomerCache(Generic[K, V]):
    """A bounded LRU of `key -> value`, each entry belonging to one customer and dropped when that customer changes.

    `customer_of(key, value)` names the customer an entry belongs to (None: never store it); by default the key
    is the customer id. The owner may be any id its feed names: the stock cache's entries belong to products.
    """

    def __init__(
        self,
        name: str,
        max_entries: int,
        max_age_seconds: float | None,
        customer_of: Callable[[K, V], str | None] = _same_customer,
        clock: Callable[[], float] = time.monotonic,
        keep_last_known: bool = False,
    ) -> None:
        self.name = name
        #: Values dropped by a change (or by a lost feed), kept for `last_known`; only where a stale answer is
        #: better than none (profiles, never consent).
        self._last_known: OrderedDict[K, V] | None = OrderedDict() if keep_last_known else None
        self.stats = CacheStats()
        self._max_entries = max_entries
        self._max_age = math.inf if max_age_seconds is None else max_age_seconds
        self._customer_of = customer_of
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float, str]] = OrderedDict()
        self._keys_of: dict[str, set[K]] = {}
        self._live = False
        self._seq = 0  # bumped by every invalidation and reset
        self._history: deque[tuple[int, frozenset[str]]] = deque(maxlen=_HISTORY)

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or `await load()` (stored when the feed is live and no change raced the fetch)."""
        entry = self._fresh(key)
        if entry is not None:
            return entry[0]
        self.stats.misses += 1
        started = self._seq
        value = await load()  # failures propagate and store nothing
        self._store_loaded(started, key, value)
        return value

    async def get_many(self, keys: Iterable[K], load: Callable[[list[K]], Awaitable[dict[K, V]]]) -> dict[K, V]:
        """The cached values, and the missing ones from one `await load(missing)` (which must answer every key)."""
        found: dict[K, V] = {}
        missing: list[K] = []
        for key in keys:
            entry = self._fresh(key)
            if entry is not None:
                found[key] = entry[0]
            else:
                missing.append(key)
        if missing:
            self.stats.misses += len(missing)
            started = self._seq
            loaded = await load(missing)  # failures propagate and store nothing
            for key in missing:
                self._store_loaded(started, key, loaded[key])
                found[key] = loaded[key]
        return found

    def _fresh(self, key: K) -> tuple[V, float, str] | None:
        """The entry if it is cached and not too old (counted as a hit); an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() < entry[1]:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry
        self._remember(key, entry)
        self._drop(key)
        return None

    def _store_loaded(self, started: int, key: K, value: V) -> None:
        if self._live and self._max_entries > 0:
            customer_id = self._customer_of(key, value)
            if customer_id is not None and not self._changed_since(started, customer_id):
                self._store(key, value, customer_id)

    def last_known(self, key: K) -> V | None:
        """The value this cache held before its customer last changed (or its feed was lost), if it kept one: for
        answering with a known-stale value when the owner cannot answer in time."""
        return self._last_known.get(key) if self._last_known is not None else None

    def invalidate(self, customer_ids: Iterable[str]) -> None:
        """These customers changed: drop their entries and spoil fetches of them now in flight."""
        changed = frozenset(customer_ids)
        self._seq += 1
        self._history.append((self._seq, changed))
        for customer_id in changed:
            for key in self._keys_of.pop(customer_id, ()):
                self._remember(key, self._entries.pop(key, None))

    def go_live(self) -> None:
        """The change stream is subscribed: entries may be stored from now on."""
        self._live = True

    def reset(self) -> None:
        """The change stream is gone: forget everything and store nothing until `go_live`."""
        self._live = False
        self._seq += 1
        self._history.clear()  # with no history every in-flight fetch counts as raced
        for key, entry in self._entries.items():
            self._remember(key, entry)
        self._entries.clear()
        self._keys_of.clear()

    def _remember(self, key: K, entry: tuple[V, float, str] | None) -> None:
        if self._last_known is None or entry is None:
            return
        self._last_known[key] = entry[0]
        self._last_known.move_to_end(key)
        while len(self._last_known) > self._max_entries:
            self._last_known.popitem(last=False)

    def _changed_since(self, seq: int, customer_id: str) -> bool:
        if seq == self._seq:
            return False
        if not self._history or self._history[0][0] > seq + 1:
            return True  # the changes since then are no longer all known: assume the worst
        return any(customer_id in changed for at, changed in self._history if at > seq)

    def _store(self, key: K, value: V, customer_id: str) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, self._clock() + self._max_age, customer_id)
        self._keys_of.setdefault(customer_id, set()).add(key)
        if self._last_known is not None:
            self._last_known.pop(key, None)  # superseded by a current value
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._keys_of.get(entry[2])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of[entry[2]]


class ChangeSubscription:
    """Keeps a change stream open for some caches: live while subscribed, reset whenever the stream is lost."""

    def __init__(
        self,
        name: str,
        watch: Callable[[], AsyncIterator[Sequence[str]]],
        caches: Sequence[CustomerCache],
    ) -> None:
        self.name = name
        self._watch = watch
        self._caches = caches
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        if self._caches and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"watch-{self.name}")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._reset()

    async def _run(self) -> None:
        delay = _RETRY_MIN_SECONDS
        while True:
            try:
                async for customer_ids in self._watch():
                    if not self.subscribed.is_set():
                        for cache in self._caches:
                            cache.go_live()
                        self.subscribed.set()
                        delay = _RETRY_MIN_SECONDS
                        log.info("%s change feed subscribed", self.name)
                    if customer_ids:
                        for cache in self._caches:
                            cache.invalidate(customer_ids)
                log.info("%s change feed ended; caches bypassed until it is back", self.name)
            except grpc.aio.AioRpcError as exc:
                if self.subscribed.is_set() or delay == _RETRY_MIN_SECONDS:
                    log.warning("%s change feed lost: %s", self.name, exc.code().name)
            self._reset()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_SECONDS)

    def _reset(self) -> None:
        self.subscribed.clear()
        for cache in self._caches:
            cache.reset()
