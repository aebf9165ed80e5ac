"""The profile read cache (`services.profile.storage.ReadCache`) on its own: read-through with the stale-read race
closed, write-through on commit, the LRU bound, and the LISTEN session that vouches for what it serves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.profile.domain import AcceptedEvent, Activity, ProfileState
from services.profile.domain import events as ev
from services.profile.domain.events import summarize
from services.profile.storage import CachedProfile, ReadCache, shared_document

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def purchase(event_id: str, hours_ago: float, amount: float = 10.0, customer_id: str = "c-1") -> AcceptedEvent:
    payload = ev.Purchase("o", (ev.OrderLine("SKU-1", 1, amount, amount),), 0.0, False, "pos", "")
    return AcceptedEvent(event_id, customer_id, NOW - timedelta(hours=hours_ago), "pos", payload)


def view(event_id: str, hours_ago: float, sku: str = "SKU-9", customer_id: str = "c-1") -> AcceptedEvent:
    return AcceptedEvent(event_id, customer_id, NOW - timedelta(hours=hours_ago), "web", ev.ProductView(sku, 42.0))


def folded(*events: AcceptedEvent) -> ProfileState:
    state = ProfileState()
    for event in events:
        state.apply(event, NOW)
    return state


def activity(*events: AcceptedEvent) -> tuple[Activity, ...]:
    """Recent activity as a read gives it: newest first."""
    ordered = sorted(events, key=lambda event: (event.occurred_at, event.event_id), reverse=True)
    return tuple(Activity(e.event_id, e.kind, e.occurred_at, summarize(e.payload)) for e in ordered)


def encoded(document: dict) -> str:
    """A saved document as the transaction hands it to the cache: the JSON text it was stored as."""
    return orjson.dumps(document).decode()


def entry(*events: AcceptedEvent, with_activity: bool = True) -> CachedProfile:
    return CachedProfile(folded(*events), NOW, activity(*events) if with_activity else None)


def read(cache: ReadCache, customer_id: str, found: CachedProfile | None) -> None:
    """A read-through miss completing without interference, in the order `load_profile` calls the cache: the miss,
    the token taken, the row read, the entry kept."""
    assert cache.get(customer_id, with_activity=True) is None
    token = cache.loading(customer_id)
    cache.keep(customer_id, token, found)


def commit(cache: ReadCache, documents: dict[str, str], events, at) -> None:
    """An ingest committed these documents (each saved as row version 2)."""
    cache.committed(documents, dict.fromkeys(documents, 2), events, at)


def test_a_kept_read_is_served_until_evicted_and_the_counters_count_hits_and_misses():
    cache = ReadCache(max_entries=10, activity_limit=3)
    assert cache.get("c-1", with_activity=True) is None
    kept = entry(purchase("e-1", 5))
    read(cache, "c-1", kept)
    assert cache.get("c-1", with_activity=True) is kept
    assert cache.get("c-1", with_activity=False) is kept  # a read without activity is served too
    assert cache.get("c-2", with_activity=False) is None
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 1)


def test_a_read_that_found_nothing_keeps_nothing():
    cache = ReadCache(max_entries=10, activity_limit=3)
    read(cache, "c-1", None)
    assert len(cache) == 0 and cache.get("c-1", with_activity=False) is None


@pytest.mark.parametrize(
    "meanwhile",
    [
        pytest.param(lambda cache: commit(cache, {"c-1": encoded(folded().to_document())}, {}, NOW), id="commit"),
        pytest.param(lambda cache: cache.invalidate(["c-1"]), id="invalidate-customer"),
        pytest.param(lambda cache: cache.invalidate(), id="invalidate-all"),
    ],
)
def test_a_read_loading_while_its_customer_changed_is_not_kept(meanwhile):
    """The stale-read race: the row was read before the change committed, so what it found may predate it."""
    cache = ReadCache(max_entries=10, activity_limit=3)
    assert cache.get("c-1", with_activity=True) is None  # a read loads only after a miss
    token = cache.loading("c-1")
    meanwhile(cache)
    cache.keep("c-1", token, entry(purchase("e-1", 5)))
    assert len(cache) == 0
    assert cache.get("c-1", with_activity=False) is None
    read(cache, "c-1", entry(purchase("e-1", 5)))  # a read started after the change is kept
    assert cache.get("c-1", with_activity=False) is not None


def test_a_change_of_another_customer_does_not_stop_a_read_from_being_kept():
    cache = ReadCache(max_entries=10, activity_limit=3)
    assert cache.get("c-1", with_activity=True) is None  # a read loads only after a miss
    token = cache.loading("c-1")
    commit(cache, {"c-2": encoded(folded().to_document())}, {}, NOW)
    cache.invalidate(["c-3"])
    kept = entry(purchase("e-1", 5))
    cache.keep("c-1", token, kept)
    assert cache.get("c-1", with_activity=True) is kept


def test_of_two_overlapping_reads_only_the_newest_is_kept():
    cache = ReadCache(max_entries=10, activity_limit=3)
    assert cache.get("c-1", with_activity=True) is None  # a read loads only after a miss
    older, newer = cache.loading("c-1"), cache.loading("c-1")
    cache.keep("c-1", older, entry(purchase("e-1", 5)))
    assert len(cache) == 0
    kept = entry(purchase("e-1", 5), purchase("e-2", 4))
    cache.keep("c-1", newer, kept)
    assert cache.get("c-1", with_activity=True) is kept


def test_a_commit_replaces_a_cached_state_with_its_own_copy_of_the_saved_document():
    cache = ReadCache(max_entries=10, activity_limit=5)
    first = purchase("e-1", 5, amount=10.0)
    read(cache, "c-1", entry(first))
    second = purchase("e-2", 1, amount=30.0)
    state = folded(first, second)
    document = state.to_document()
    at = NOW + timedelta(minutes=1)
    commit(cache, {"c-1": encoded(document)}, {"c-1": activity(second)}, at)

    got = cache.get("c-1", with_activity=True)
    assert got is not None
    assert got.state == state and got.state is not state
    assert (got.state.order_count, got.state.total_spend, got.updated_at) == (2, 40.0, at)
    # The caller's document (and the state whose containers it shares) may change afterwards: the entry may not.
    document["order_count"] = 99
    document["purchase_amounts"].append(1000.0)
    document["last_viewed"].append(["SKU-X", 1.0, NOW])
    assert got.state == folded(first, second)
    assert cache.get("c-1", with_activity=False).state.order_count == 2


def test_a_written_through_state_is_the_document_as_committed_even_when_first_read_later():
    # The entry keeps the saved document's JSON and decodes it at its first read, once.
    cache = ReadCache(max_entries=10, activity_limit=5)
    first = purchase("e-1", 5, amount=10.0)
    read(cache, "c-1", entry(first))
    second = purchase("e-2", 1, amount=30.0)
    document = folded(first, second).to_document()
    commit(cache, {"c-1": encoded(document)}, {"c-1": activity(second)}, NOW)
    document["order_count"] = 99  # the transaction's document changing before anyone read the entry
    document["purchase_amounts"].append(1000.0)

    got = cache.get("c-1", with_activity=False)
    assert got.state == folded(first, second)
    assert cache.get("c-1", with_activity=True).state is got.state


def test_a_commit_merges_its_events_into_the_cached_activity_newest_first_up_to_the_limit():
    cache = ReadCache(max_entries=10, activity_limit=3)
    old = [purchase("e-1", 10), view("e-3", 6)]
    read(cache, "c-1", entry(*old))
    new = [view("e-4", 2), purchase("e-2", 8), view("e-0", 12)]  # newer, between and older than the cached ones
    commit(cache, {"c-1": encoded(folded(*old, *new).to_document())}, {"c-1": list(activity(*new))}, NOW)
    got = cache.get("c-1", with_activity=True)
    assert got is not None
    assert [a.event_id for a in got.activity] == ["e-4", "e-3", "e-2"]
    assert got.activity == activity(*old, *new)[:3]  # what a read of the stored events would give


def test_events_at_the_same_instant_are_ordered_by_event_id_as_the_database_orders_them():
    cache = ReadCache(max_entries=10, activity_limit=4)
    read(cache, "c-1", entry(view("e-b", 3)))
    new = [view("e-a", 3), view("e-c", 3)]
    commit(cache, {"c-1": encoded(folded().to_document())}, {"c-1": list(activity(*new))}, NOW)
    assert [a.event_id for a in cache.get("c-1", with_activity=True).activity] == ["e-c", "e-b", "e-a"]


def test_a_commit_without_events_for_a_customer_keeps_its_cached_activity():
    """E.g. a segment re-evaluation saving a state: nothing new happened to the customer."""
    cache = ReadCache(max_entries=10, activity_limit=3)
    cached = entry(purchase("e-1", 5))
    read(cache, "c-1", cached)
    commit(cache, 
        {"c-1": encoded(folded(purchase("e-1", 5)).to_document())}, {"c-2": list(activity(view("x", 1)))}, NOW
    )
    assert cache.get("c-1", with_activity=True).activity == cached.activity


def test_a_commit_does_not_add_customers_nobody_read():
    cache = ReadCache(max_entries=10, activity_limit=3)
    read(cache, "c-1", entry(purchase("e-1", 5)))
    commit(cache, 
        {
            "c-1": encoded(folded().to_document()),
            "c-2": encoded(folded(purchase("e-9", 1, customer_id="c-2")).to_document()),
        },
        {"c-2": list(activity(purchase("e-9", 1, customer_id="c-2")))},
        NOW,
    )
    assert len(cache) == 1
    assert cache.get("c-2", with_activity=False) is None


def test_an_entry_kept_without_activity_serves_reads_without_activity_only_even_after_a_commit():
    cache = ReadCache(max_entries=10, activity_limit=3)
    read(cache, "c-1", entry(purchase("e-1", 5), with_activity=False))
    assert cache.get("c-1", with_activity=True) is None
    assert cache.get("c-1", with_activity=False) is not None
    new = purchase("e-2", 1)
    commit(cache, {"c-1": encoded(folded(purchase("e-1", 5), new).to_document())}, {"c-1": list(activity(new))}, NOW)
    # Only the newest events are known, not the customer's whole recent activity: still not served.
    assert cache.get("c-1", with_activity=True) is None
    got = cache.get("c-1", with_activity=False)
    assert got is not None and got.activity is None and got.state.order_count == 2
    assert (cache.hits, cache.misses) == (2, 3)


def test_the_least_recently_read_entry_is_evicted_first():
    cache = ReadCache(max_entries=2, activity_limit=3)
    read(cache, "a", entry(purchase("e-a", 1, customer_id="a")))
    read(cache, "b", entry(purchase("e-b", 1, customer_id="b")))
    assert cache.get("a", with_activity=False) is not None  # now "b" is the least recently read
    read(cache, "c", entry(purchase("e-c", 1, customer_id="c")))
    assert len(cache) == 2
    assert cache.get("b", with_activity=False) is None
    assert cache.get("a", with_activity=False) is not None
    assert cache.get("c", with_activity=False) is not None


def test_a_cache_of_size_zero_never_keeps_anything():
    cache = ReadCache(max_entries=0, activity_limit=3)
    read(cache, "c-1", entry(purchase("e-1", 5)))
    assert len(cache) == 0
    assert cache.get("c-1", with_activity=False) is None
    assert (cache.hits, cache.misses) == (0, 2)


def test_without_a_session_vouching_for_it_the_cache_serves_and_keeps_nothing():
    session: list[int | None] = [None]
    cache = ReadCache(max_entries=10, activity_limit=3, session=lambda: session[0])
    read(cache, "c-1", entry(purchase("e-1", 5)))
    assert len(cache) == 0
    assert cache.get("c-1", with_activity=False) is None
    session[0] = 1  # listening now: what was read before is still not there
    assert cache.get("c-1", with_activity=False) is None
    read(cache, "c-1", entry(purchase("e-1", 5)))
    assert cache.get("c-1", with_activity=False) is not None
    session[0] = None  # not listening any more: an entry kept before is not served
    assert cache.get("c-1", with_activity=False) is None
    assert (cache.hits, cache.misses) == (1, 5)


def test_a_new_session_empties_the_cache_and_drops_the_reads_loading_in_the_old_one():
    session = [1]
    cache = ReadCache(max_entries=10, activity_limit=3, session=lambda: session[0])
    read(cache, "a", entry(purchase("e-a", 1, customer_id="a")))
    assert cache.get("a", with_activity=False) is not None
    token = cache.loading("b")  # started in session 1...
    session[0] = 2  # ...changes may have been missed in between
    cache.keep("b", token, entry(purchase("e-b", 1, customer_id="b")))  # ...finished in session 2
    assert len(cache) == 0
    assert cache.get("a", with_activity=False) is None
    assert cache.get("b", with_activity=False) is None
    read(cache, "a", entry(purchase("e-a", 1, customer_id="a")))  # the new session fills it again
    assert cache.get("a", with_activity=False) is not None


def test_a_new_session_is_noticed_by_a_read_even_if_nothing_was_kept_or_served_in_between():
    """An entry kept in session 1 must not be served in session 2, though no call saw the session change."""
    session = [1]
    cache = ReadCache(max_entries=10, activity_limit=3, session=lambda: session[0])
    read(cache, "a", entry(purchase("e-a", 1, customer_id="a")))
    session[0] = 2
    assert cache.get("a", with_activity=False) is None
    assert len(cache) == 0


# ------------------------------------------------------------------ states shared by other replicas


def held(cache: ReadCache, version: int, *events: AcceptedEvent) -> CachedProfile:
    """c-1 read from the database at this row version."""
    found = CachedProfile(folded(*events), NOW, activity(*events), version=version)
    read(cache, "c-1", found)
    return found


def shared(version: int, *events: AcceptedEvent, before: tuple[AcceptedEvent, ...] = ()):
    """Another replica's saved state of c-1 (after `before` and these new events) as its NOTIFY carries it."""
    rows = [[a.event_id, a.kind, a.occurred_at.isoformat(), a.summary] for a in activity(*events)]
    return [("c-1", version, shared_document(encoded(folded(*before, *events).to_document())), rows)]


def test_another_replicas_next_version_refills_the_entry_it_dropped_with_the_new_events_merged():
    cache = ReadCache(max_entries=10, activity_limit=3)
    old = (purchase("e-1", 5), view("e-2", 4))
    held(cache, 3, *old)
    new = purchase("e-3", 1, amount=30.0)
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    assert cache.get("c-1", with_activity=True) is None  # never served between the announcement and its state
    misses = cache.misses
    cache.saved_elsewhere(shared(4, new, before=old), NOW)
    refilled = cache.get("c-1", with_activity=True)
    assert refilled is not None and cache.misses == misses and refilled.version == 4
    assert refilled.state.to_document() == folded(*old, new).to_document()
    assert refilled.activity == activity(*old, new)[:3]


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda cache: cache.saved_elsewhere(shared(5, purchase("e-3", 1)), NOW), id="a version skipped"),
        pytest.param(lambda cache: None, id="no state shared"),
    ],
)
def test_without_the_very_next_version_the_customer_is_read_afresh(how):
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 3, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    how(cache)
    assert cache.get("c-1", with_activity=False) is None


def test_nothing_is_set_aside_unless_asked_nor_for_an_entry_of_unknown_version():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 3, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=False)
    cache.saved_elsewhere(shared(4, purchase("e-3", 1)), NOW)
    assert cache.get("c-1", with_activity=False) is None
    read(cache, "c-2", entry(purchase("e-9", 5, customer_id="c-2")))  # version 0: not known
    cache.dropped_elsewhere(["c-2"], keep_aside=True)
    cache.saved_elsewhere([("c-2", 1, shared_document(encoded(folded().to_document())), [])], NOW)
    assert cache.get("c-2", with_activity=False) is None


def test_a_read_under_way_keeps_its_own_result_rather_than_the_shared_state():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 3, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    token = cache.loading("c-1")  # a read that missed after the announcement
    cache.saved_elsewhere(shared(4, purchase("e-3", 1)), NOW)
    assert cache.get("c-1", with_activity=False) is None
    fresh = CachedProfile(folded(purchase("e-1", 5), purchase("e-3", 1)), NOW, None, version=4)
    cache.keep("c-1", token, fresh)
    assert cache.get("c-1", with_activity=False) is fresh


def test_a_new_listen_session_forgets_what_was_set_aside():
    session = [1]
    cache = ReadCache(max_entries=10, activity_limit=3, session=lambda: session[0])
    held(cache, 3, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    session[0] = 2  # the LISTEN connection was lost and came back: announcements may have been missed
    cache.saved_elsewhere(shared(4, purchase("e-3", 1)), NOW)
    assert cache.get("c-1", with_activity=False) is None


def test_the_next_announcement_after_shared_states_starts_a_new_set_aside():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 3, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    cache.saved_elsewhere([], NOW)  # that transaction's states: none of them c-1's (e.g. it did not fit)
    cache.dropped_elsewhere(["c-2"], keep_aside=True)  # the next transaction
    cache.saved_elsewhere(shared(4, purchase("e-3", 1)), NOW)
    assert cache.get("c-1", with_activity=False) is None


def test_this_replicas_own_commit_between_an_announcement_and_its_states_wins():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 1, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)  # another replica committed version 2
    cache.committed({"c-1": encoded(folded().to_document())}, {"c-1": 3}, {}, NOW)  # this one, version 3
    cache.saved_elsewhere(shared(2, purchase("e-2", 3)), NOW)  # version 2's state arrives late: older
    assert cache.get("c-1", with_activity=False) is None


def test_a_read_kept_between_an_announcement_and_its_states_is_not_overwritten():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 1, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    fresh = CachedProfile(folded(purchase("e-1", 5), purchase("e-2", 3)), NOW, None, version=2)
    read(cache, "c-1", fresh)
    cache.saved_elsewhere(shared(2, purchase("e-2", 3)), NOW)
    assert cache.get("c-1", with_activity=False) is fresh


def test_a_commit_over_an_entry_another_replica_wrote_since_drops_it_instead_of_writing_through():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 1, purchase("e-1", 5))
    # Another replica committed version 2 (its announcement not here yet); this one commits version 3.
    cache.committed({"c-1": encoded(folded().to_document())}, {"c-1": 3}, {"c-1": list(activity(view("e-3", 1)))}, NOW)
    assert cache.get("c-1", with_activity=True) is None  # version 3's activity would lack version 2's events


def test_an_entry_of_unknown_version_is_written_through_but_never_refilled():
    cache = ReadCache(max_entries=10, activity_limit=3)
    read(cache, "c-1", entry(purchase("e-1", 5)))  # version 0: e.g. a survivor's activity read apart from its row
    cache.committed({"c-1": encoded(folded().to_document())}, {"c-1": 7}, {}, NOW)
    assert cache.held_version("c-1") == 0 and cache.get("c-1", with_activity=True) is not None
    cache.dropped_elsewhere(["c-1"], keep_aside=True)
    cache.saved_elsewhere(shared(8, purchase("e-2", 1)), NOW)
    assert cache.get("c-1", with_activity=False) is None


def test_only_the_states_right_after_an_announcement_refill_what_it_set_aside():
    cache = ReadCache(max_entries=10, activity_limit=3)
    held(cache, 3, purchase("e-1", 5))
    cache.dropped_elsewhere(["c-1"], keep_aside=True)  # a replica that shares no states (e.g. an older release)
    cache.dropped_elsewhere(["c-2"], keep_aside=True)  # the next transaction, from a replica that shares
    cache.saved_elsewhere(shared(4, purchase("e-3", 1)), NOW)
    assert cache.get("c-1", with_activity=False) is None
