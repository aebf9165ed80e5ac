"""The profile use cases with in-memory fakes: rejections, duplicates, identity resolution, reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from libs.changefeed import ChangeFeed
from libs.errors import InvalidArgument, NotFound, Unavailable
from services.profile.domain import (
    FEATURE_NAMES,
    Activity,
    Event,
    EventRecord,
    Identifier,
    ProfileService,
    ProfileState,
    StoredProfile,
)
from services.profile.domain import events as ev
from services.profile.domain.service import APPLY_CHUNK

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
EMAIL = 1


class InMemoryTransaction:
    """Stages writes; the repository keeps them only when the transaction block exits cleanly."""

    def __init__(self, repository: InMemoryRepository) -> None:
        self.repository = repository
        self.events: dict[str, EventRecord] = {}
        self.states: dict[str, dict] = {}
        self.announced: set[str] = set()

    async def add_events(self, records: Sequence[EventRecord]) -> set[str]:
        new = {r.event.event_id: r for r in records if r.event.event_id not in self.repository.events}
        self.events.update(new)
        return set(new)

    async def lock_states(self, customer_ids: Sequence[str], now: datetime) -> dict[str, ProfileState]:
        # A freshly decoded document per load, as the real column gives (the state takes ownership of it); a
        # customer without one gets a new state, as the real lock creates.
        return {
            cid: ProfileState.from_document(orjson.loads(orjson.dumps(self.repository.states[cid])))
            if cid in self.repository.states
            else ProfileState()
            for cid in customer_ids
        }

    async def roots(self, customer_ids: Sequence[str]) -> dict[str, str]:
        return {}  # no merges or erasures here: tests/integration/test_profile_lineage.py covers them

    async def erased(self, customer_ids: Sequence[str]) -> set[str]:
        return set()

    def announce(self, customer_ids) -> None:
        self.announced.update(customer_ids)

    async def save_states(self, states: Mapping[str, ProfileState], now: datetime) -> None:
        # Through JSON as the real column does (orjson, like libs.db's engines).
        self.states.update({cid: orjson.loads(orjson.dumps(state.to_document())) for cid, state in states.items()})


class InMemoryRepository:
    def __init__(self) -> None:
        self.events: dict[str, EventRecord] = {}
        self.states: dict[str, dict] = {}
        self.fail_on_save = False
        self.commits = 0
        self.fail_after_commits: int | None = None
        self.announced: set[str] = set()
        self.changes = ChangeFeed()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[InMemoryTransaction]:
        tx = InMemoryTransaction(self)
        yield tx
        if self.fail_after_commits is not None and self.commits >= self.fail_after_commits:
            raise Unavailable("database went away")
        self.commits += 1
        if self.fail_on_save:
            raise Unavailable("database went away")
        self.events.update(tx.events)
        self.states.update(tx.states)
        self.announced.update(tx.announced)
        self.changes.publish(tx.announced)

    async def erased(self, customer_ids: Sequence[str]) -> set[str]:
        return set()

    async def load_state(self, customer_id: str) -> ProfileState | None:
        doc = self.states.get(customer_id)
        return ProfileState.from_document(doc) if doc is not None else None

    async def load_profile(self, customer_id: str, recent_activity: int) -> StoredProfile | None:
        state = await self.load_state(customer_id)
        if state is None:
            return None
        mine = sorted(
            (r for r in self.events.values() if r.event.customer_id == customer_id),
            key=lambda r: (r.event.occurred_at, r.event.event_id),
            reverse=True,
        )[:recent_activity]
        activity = tuple(Activity(r.event.event_id, r.event.kind, r.event.occurred_at, r.summary) for r in mine)
        return StoredProfile(state, NOW, activity)


class FakeResolver:
    """Identity as a dict from e-mail to customer; "bad" values are malformed; `down` makes every call fail."""

    def __init__(self, customers: dict[str, str] | None = None, down: bool = False) -> None:
        self.customers = customers or {}
        self.down = down
        self.calls: list[tuple[Identifier, ...]] = []

    async def resolve(self, identifiers: Sequence[Identifier]) -> str:
        self.calls.append(tuple(identifiers))
        if self.down:
            raise Unavailable("identity service could not resolve identifiers: UNAVAILABLE")
        for i, identifier in enumerate(identifiers):
            if identifier.value == "bad":
                raise InvalidArgument(f"identifiers[{i}].value", "not an e-mail address")
        return self.customers.setdefault(identifiers[0].value, f"c-{len(self.customers) + 1}")


def purchase_event(event_id: str, customer_id: str = "c-1", amount: float = 10.0, **kw) -> Event:
    payload = ev.Purchase("o", (ev.OrderLine("SKU-1", 1, amount, amount),), 0.0, False, "pos", "")
    when = kw.get("when", NOW - timedelta(hours=1))
    return Event(event_id, customer_id, kw.get("identifiers", ()), when, "pos", payload)


@pytest.fixture
def repository() -> InMemoryRepository:
    return InMemoryRepository()


@pytest.fixture
def service(repository) -> ProfileService:
    return ProfileService(repository, max_batch=5, recent_activity=3, clock=lambda: NOW)


async def test_valid_events_are_applied_and_malformed_ones_rejected_with_their_index(service, repository):
    bad = purchase_event("e-2")
    bad = Event(bad.event_id, bad.customer_id, (), bad.occurred_at, "pos", ev.Purchase("o", (), 0.0, False, "", ""))
    result = await service.ingest([purchase_event("e-1"), bad, purchase_event("e-3", amount=5.0)], FakeResolver())
    assert result.accepted == 2 and result.duplicates == 0
    assert [(r.index, r.event_id, r.field) for r in result.rejected] == [(1, "e-2", "purchase.lines")]
    assert set(repository.events) == {"e-1", "e-3"}
    assert ProfileState.from_document(repository.states["c-1"]).total_spend == pytest.approx(15.0)


async def test_an_id_already_applied_or_repeated_in_the_batch_counts_as_duplicate(service, repository):
    first = await service.ingest([purchase_event("e-1"), purchase_event("e-1", amount=99.0)], FakeResolver())
    assert (first.accepted, first.duplicates) == (1, 1)
    again = await service.ingest([purchase_event("e-1"), purchase_event("e-2")], FakeResolver())
    assert (again.accepted, again.duplicates) == (1, 1)
    assert ProfileState.from_document(repository.states["c-1"]).total_spend == pytest.approx(20.0)


async def test_batch_size_limits_are_invalid_argument(service):
    with pytest.raises(InvalidArgument) as empty:
        await service.ingest([], FakeResolver())
    assert empty.value.field == "events"
    with pytest.raises(InvalidArgument) as big:
        await service.ingest([purchase_event(f"e-{i}") for i in range(6)], FakeResolver())
    assert big.value.field == "events" and "at most 5" in big.value.reason


async def test_identifiers_are_resolved_once_per_distinct_set(service, repository):
    alice = (Identifier(EMAIL, "alice@example.com"),)
    resolver = FakeResolver({"alice@example.com": "c-alice"})
    events = [purchase_event(f"e-{i}", customer_id="", identifiers=alice) for i in range(3)]
    result = await service.ingest(events, resolver)
    assert result.accepted == 3
    assert resolver.calls == [alice]
    assert ProfileState.from_document(repository.states["c-alice"]).order_count == 3


async def test_identifiers_the_identity_service_rejects_reject_only_that_event(service, repository):
    events = [
        purchase_event(
            "e-1", customer_id="", identifiers=(Identifier(EMAIL, "ok@example.com"), Identifier(EMAIL, "bad"))
        ),
        purchase_event("e-2", customer_id="", identifiers=(Identifier(EMAIL, "ok@example.com"),)),
    ]
    result = await service.ingest(events, FakeResolver())
    assert result.accepted == 1
    assert [(r.index, r.field, r.reason) for r in result.rejected] == [
        (0, "identifiers[1].value", "not an e-mail address")
    ]


async def test_identity_down_fails_the_whole_batch_and_applies_nothing(service, repository):
    events = [purchase_event("e-1"), purchase_event("e-2", customer_id="", identifiers=(Identifier(EMAIL, "a@b.co"),))]
    with pytest.raises(Unavailable):
        await service.ingest(events, FakeResolver(down=True))
    assert repository.events == {} and repository.states == {}
    # The producer retries once identity is back: everything is applied then.
    assert (await service.ingest(events, FakeResolver())).accepted == 2


async def test_malformed_events_are_not_sent_to_identity(service):
    resolver = FakeResolver()
    event = purchase_event("e-1", customer_id="", identifiers=(Identifier(EMAIL, "a@b.co"),))
    event = Event(event.event_id, "", event.identifiers, None, "pos", event.payload)
    result = await service.ingest([event], resolver)
    assert result.rejected[0].field == "occurred_at"
    assert resolver.calls == []


async def test_a_failed_transaction_applies_nothing(service, repository):
    repository.fail_on_save = True
    with pytest.raises(Unavailable):
        await service.ingest([purchase_event("e-1")], FakeResolver())
    assert repository.events == {} and repository.states == {}


async def test_a_big_batch_is_applied_in_chunks_and_a_retry_after_a_partial_failure_applies_each_event_once(
    repository,
):
    service = ProfileService(repository, max_batch=APPLY_CHUNK * 3, recent_activity=3, clock=lambda: NOW)
    events = [purchase_event(f"e-{i:04d}", customer_id=f"c-{i % 7}") for i in range(APPLY_CHUNK * 2 + 10)]
    repository.fail_after_commits = 1  # the first chunk commits, the second fails
    with pytest.raises(Unavailable):
        await service.ingest(events, FakeResolver())
    assert len(repository.events) == APPLY_CHUNK
    repository.fail_after_commits = None
    result = await service.ingest(events, FakeResolver())  # the producer retries the whole batch
    assert (result.accepted, result.duplicates) == (APPLY_CHUNK + 10, APPLY_CHUNK)
    assert repository.commits == 4  # 1 + 3 chunks
    profiles = [await service.get_profile(f"c-{c}", include_features=False) for c in range(7)]
    assert sum(profile.traits.order_count for profile in profiles) == len(events)  # every purchase folded exactly once


async def test_a_stream_reads_a_message_only_once_the_one_before_is_committed(service, repository):
    """Flow control: the next message is pulled only once the previous one is committed, so a producer faster
    than the database waits in its sends (HTTP/2 holds it) instead of filling the server's memory."""
    stored_at_pull: list[int] = []

    async def producer():
        for b in range(3):
            stored_at_pull.append(len(repository.events))
            bad = [purchase_event("s-bad", amount=-1.0)] if b == 1 else []
            yield [purchase_event(f"s-{b}-{i}") for i in range(4)] + bad
        stored_at_pull.append(len(repository.events))

    result = await service.ingest_stream(producer(), FakeResolver)
    assert stored_at_pull == [0, 4, 8, 12]  # every batch committed before the next was read
    assert (result.accepted, result.duplicates) == (12, 0)
    assert [(r.index, r.event_id) for r in result.rejected] == [(8, "s-bad")]  # counted from the stream's start


async def test_events_of_a_batch_are_folded_in_event_time_order(service, repository):
    tier = [
        Event("e-new", "c-1", (), NOW - timedelta(hours=1), "crm", ev.LoyaltyChange(10, 3)),
        Event("e-old", "c-1", (), NOW - timedelta(hours=5), "crm", ev.LoyaltyChange(10, 1)),
    ]
    await service.ingest(tier, FakeResolver())
    profile = await service.get_profile("c-1", include_features=False)
    assert profile.traits.loyalty_tier == 3 and profile.traits.loyalty_points == 20


async def test_get_profile_returns_traits_recent_activity_and_features_when_asked(service):
    events = [purchase_event(f"e-{i}", when=NOW - timedelta(hours=i)) for i in range(1, 5)]
    await service.ingest(events, FakeResolver())
    profile = await service.get_profile("c-1", include_features=True)
    assert profile.traits.order_count == 4
    assert [a.event_id for a in profile.recent_activity] == ["e-1", "e-2", "e-3"]  # newest first, limited
    assert profile.first_seen_at == NOW - timedelta(hours=4)
    assert profile.features is not None and tuple(profile.features) == FEATURE_NAMES
    assert (await service.get_profile("c-1", include_features=False)).features is None
    assert (await service.get_features("c-1"))["order_count"] == 4.0


@pytest.mark.parametrize("read", ["get_profile", "get_features"])
async def test_reads_reject_an_empty_id_and_report_unknown_customers(service, read):
    call = (lambda cid: service.get_profile(cid, False)) if read == "get_profile" else service.get_features
    with pytest.raises(InvalidArgument) as empty:
        await call("")
    assert empty.value.field == "customer_id"
    with pytest.raises(NotFound):
        await call("c-unknown")


@pytest.mark.parametrize(
    ("customer_ids", "every", "page_size", "page_token", "field"),
    [
        ([], False, 0, "", "customer_ids"),
        (["c-1"], True, 0, "", "customer_ids"),
        (["c-1", ""], False, 0, "", "customer_ids[1]"),
        ([f"c-{i}" for i in range(1001)], False, 0, "", "customer_ids"),
        ([], True, 1001, "", "page_size"),
        ([], True, -1, "", "page_size"),
        ([], True, 0, "nope", "page_token"),
    ],
)
async def test_refold_targets_are_validated_field_by_field(service, customer_ids, every, page_size, page_token, field):
    with pytest.raises(InvalidArgument) as error:
        await service.refold_targets(customer_ids, every, page_size, page_token)
    assert error.value.field == field


async def test_refold_targets_named_are_deduplicated_in_order(service):
    assert await service.refold_targets(["c-2", "c-1", "c-2"], False, 0, "") == (["c-2", "c-1"], "")
