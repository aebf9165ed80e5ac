"""The change feed and the decision's customer caches: exact invalidation, races, resets, bounds."""

from __future__ import annotations

import asyncio

import pytest

from libs.changefeed import ChangeFeed
from libs.customer_cache import CustomerCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def live_cache(max_entries: int = 10, max_age: float = 60.0, **kwargs) -> CustomerCache:
    cache = CustomerCache("test", max_entries, max_age, **kwargs)
    cache.go_live()
    return cache


def loader(value, calls: list | None = None):
    async def load():
        if calls is not None:
            calls.append(value)
        return value

    return load


async def test_a_live_cache_serves_the_second_read_without_loading():
    cache, calls = live_cache(), []
    assert await cache.get("c-1", loader("v1", calls)) == "v1"
    assert await cache.get("c-1", loader("v2", calls)) == "v1"
    assert calls == ["v1"] and (cache.stats.hits, cache.stats.misses) == (1, 1)


async def test_a_cache_whose_feed_is_not_live_always_loads_and_stores_nothing():
    cache, calls = CustomerCache("test", 10, 60.0), []
    await cache.get("c-1", loader("v1", calls))
    await cache.get("c-1", loader("v2", calls))
    assert calls == ["v1", "v2"] and len(cache) == 0


async def test_invalidation_drops_only_that_customers_entries():
    cache = live_cache()
    await cache.get("c-1", loader("v1"))
    await cache.get("c-2", loader("w1"))
    cache.invalidate(["c-1"])
    assert await cache.get("c-1", loader("v2")) == "v2"
    assert await cache.get("c-2", loader("w2")) == "w1"


async def test_a_fetch_that_races_a_change_of_its_customer_is_not_stored():
    cache = live_cache()
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return "read-before-the-change"

    fetch = asyncio.create_task(cache.get("c-1", slow))
    await asyncio.sleep(0)
    cache.invalidate(["c-1"])  # committed while the read was in flight
    release.set()
    assert await fetch == "read-before-the-change"  # the caller still gets its answer...
    assert await cache.get("c-1", loader("fresh")) == "fresh"  # ...but it was not cached


async def test_a_change_of_another_customer_does_not_spoil_a_fetch():
    cache = live_cache()
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return "v1"

    fetch = asyncio.create_task(cache.get("c-1", slow))
    await asyncio.sleep(0)
    cache.invalidate(["c-2"])
    release.set()
    await fetch
    assert await cache.get("c-1", loader("v2")) == "v1"


async def test_a_reset_during_a_fetch_spoils_it_and_empties_the_cache():
    cache = live_cache()
    await cache.get("c-2", loader("w1"))
    release = asyncio.Event()

    async def slow():
        await release.wait()
        return "v1"

    fetch = asyncio.create_task(cache.get("c-1", slow))
    await asyncio.sleep(0)
    cache.reset()
    cache.go_live()  # resubscribed before the read came back
    release.set()
    await fetch
    assert len(cache) == 0


async def test_entries_keyed_by_identifiers_are_dropped_by_their_customer():
    cache = live_cache(customer_of=lambda key, customer_id: customer_id)
    await cache.get(("email", "ann@example.com"), loader("c-ann"))
    await cache.get(("phone", "+15551234567"), loader("c-ann"))
    await cache.get(("email", "nobody@example.com"), loader(None))  # no match: never cached
    assert len(cache) == 2
    cache.invalidate(["c-ann"])
    assert len(cache) == 0


async def test_failed_loads_propagate_and_store_nothing():
    cache = live_cache()

    async def failing():
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await cache.get("c-1", failing)
    assert len(cache) == 0


async def test_least_recently_used_entries_are_evicted_at_the_bound():
    cache = live_cache(max_entries=2)
    await cache.get("c-1", loader("v1"))
    await cache.get("c-2", loader("v2"))
    await cache.get("c-1", loader("unused"))  # c-1 is now the most recent
    await cache.get("c-3", loader("v3"))
    assert len(cache) == 2
    assert await cache.get("c-2", loader("v2-again")) == "v2-again"
    cache.invalidate(["c-1", "c-2", "c-3"])  # the reverse index followed the evictions
    assert len(cache) == 0


async def test_entries_expire_after_the_maximum_age():
    clock = Clock()
    cache = live_cache(max_age=60.0, clock=clock)
    await cache.get("c-1", loader("v1"))
    clock.now = 59.0
    assert await cache.get("c-1", loader("v2")) == "v1"
    clock.now = 61.0
    assert await cache.get("c-1", loader("v2")) == "v2"


async def test_a_changed_or_lost_value_is_kept_as_last_known_only_where_asked():
    kept, plain = live_cache(keep_last_known=True), live_cache()
    for cache in (kept, plain):
        await cache.get("c-1", loader("v1"))
        cache.invalidate(["c-1"])
    assert kept.last_known("c-1") == "v1" and plain.last_known("c-1") is None
    await kept.get("c-1", loader("v2"))
    assert kept.last_known("c-1") is None  # a current value supersedes it
    kept.reset()  # the feed is lost
    assert kept.last_known("c-1") == "v2" and len(kept) == 0


async def test_zero_max_entries_turns_caching_off():
    cache = live_cache(max_entries=0)
    await cache.get("c-1", loader("v1"))
    assert len(cache) == 0


async def next_batch(stream) -> list[str]:
    return await asyncio.wait_for(anext(stream), 1)


async def test_the_feed_says_subscribed_then_delivers_each_change_to_every_watcher():
    feed = ChangeFeed()
    first, second = feed.watch(), feed.watch()
    assert await next_batch(first) == [] and await next_batch(second) == []
    assert feed.watchers == 2
    feed.publish(["c-2", "c-1", "c-2"])
    assert await next_batch(first) == ["c-1", "c-2"]
    assert await next_batch(second) == ["c-1", "c-2"]
    await first.aclose()
    assert feed.watchers == 1


async def test_a_watcher_that_falls_behind_is_disconnected_not_skipped():
    feed = ChangeFeed(max_pending=3)
    stream = feed.watch()
    await next_batch(stream)
    feed.publish(["c-1", "c-2"])
    feed.publish(["c-3", "c-4"])  # would exceed 3 pending: the watcher is cut off
    assert feed.watchers == 0
    assert await next_batch(stream) == ["c-1", "c-2"]  # what was queued is still delivered...
    with pytest.raises(StopAsyncIteration):
        await next_batch(stream)  # ...then the stream ends, so the subscriber resets


async def test_closing_the_feed_ends_every_stream_and_refuses_new_ones():
    feed = ChangeFeed()
    stream = feed.watch()
    await next_batch(stream)
    feed.close()
    with pytest.raises(StopAsyncIteration):
        await next_batch(stream)
    with pytest.raises(StopAsyncIteration):
        await next_batch(feed.watch())


async def test_a_suspended_feed_ends_its_streams_and_refuses_new_ones_until_resumed():
    feed = ChangeFeed()
    stream = feed.watch()
    await next_batch(stream)
    feed.suspend()  # its relay lost the database: changes may be missed from now on
    with pytest.raises(StopAsyncIteration):
        await next_batch(stream)
    with pytest.raises(StopAsyncIteration):
        await next_batch(feed.watch())
    feed.resume()
    again = feed.watch()
    assert await next_batch(again) == []
    feed.publish(["p-1"])
    assert await next_batch(again) == ["p-1"]
    feed.close()
    feed.resume()  # a closed feed stays closed
    with pytest.raises(StopAsyncIteration):
        await next_batch(feed.watch())


async def test_get_many_loads_only_the_missing_keys_in_one_call_and_serves_the_rest_cached():
    cache, calls = live_cache(customer_of=lambda key, value: key[0]), []

    async def load(missing):
        calls.append(list(missing))
        return {key: f"v-{key[1]}" for key in missing}

    assert await cache.get_many([("p-1", "s1"), ("p-2", "s1")], load) == {("p-1", "s1"): "v-s1", ("p-2", "s1"): "v-s1"}
    assert await cache.get_many([("p-2", "s1"), ("p-3", "s1")], load) == {("p-2", "s1"): "v-s1", ("p-3", "s1"): "v-s1"}
    assert calls == [[("p-1", "s1"), ("p-2", "s1")], [("p-3", "s1")]]
    cache.invalidate(["p-2"])  # the owner (here a product) changed
    await cache.get_many([("p-1", "s1"), ("p-2", "s1")], load)
    assert calls[-1] == [("p-2", "s1")]


async def test_get_many_does_not_store_what_a_concurrent_change_may_have_outdated():
    cache = live_cache(customer_of=lambda key, value: key)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(missing):
        started.set()
        await release.wait()
        return {key: "old" for key in missing}

    task = asyncio.create_task(cache.get_many(["p-1", "p-2"], slow))
    await started.wait()
    cache.invalidate(["p-1"])  # p-1 changed while its read was in flight
    release.set()
    assert await task == {"p-1": "old", "p-2": "old"}
    assert len(cache) == 1  # only p-2 was stored
    calls = []
    assert await cache.get("p-2", loader("new", calls)) == "old" and calls == []


async def test_a_cache_without_an_age_bound_keeps_entries_until_changed_or_evicted():
    clock = Clock()
    cache = live_cache(max_entries=2, max_age=None, clock=clock)
    await cache.get("c-1", loader("v1"))
    clock.now = 10 * 365 * 86_400.0
    assert await cache.get("c-1", loader("v2")) == "v1"
    cache.invalidate(["c-1"])
    assert await cache.get("c-1", loader("v2")) == "v2"
    await cache.get("c-2", loader("w"))
    await cache.get("c-3", loader("x"))  # the LRU bound still holds: c-1 (least recently read) goes
    assert await cache.get("c-1", loader("v3")) == "v3"


def test_only_profiles_age_out_of_the_decision_caches():
    from services.decision.orchestrator import CustomerCaches

    caches = CustomerCaches(max_customers=10, max_age_seconds=60.0)
    ages = {c.name: c._max_age for c in (caches.resolutions, caches.consents, caches.profiles)}
    assert ages == {"resolutions": float("inf"), "consents": float("inf"), "profiles": 60.0}
