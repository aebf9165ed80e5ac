"""The profile use cases (ingest a batch, read a profile, read features) and the ports they need.

Ingesting a batch: validate each event on its own (a malformed one is rejected, the others go on), resolve the
customers of events that only carry identifiers (all or nothing: if the identity service cannot answer, the
call fails and nothing is applied, so the producer retries), drop repeated ids within the batch, then, per chunk
of `APPLY_CHUNK` events, in ONE transaction insert the events ignoring ids already stored, lock the affected
customers' states and fold only the newly inserted events into them, in event-time order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from libs.changefeed import ChangeFeed
from libs.errors import InvalidArgument, NotFound
from libs.protoconv import utcnow
from services.profile.domain.events import AcceptedEvent, Event, Identifier, summarize
from services.profile.domain.features import compute_features
from services.profile.domain.state import ProfileState, Traits
from services.profile.domain.validation import MAX_ID_LENGTH, validate_event

#: Resolve calls in flight at once for one batch: enough to hide latency, not enough to flood identity.
RESOLVE_CONCURRENCY = 16
#: Events applied per transaction. A big batch is applied in chunks so that its CPU-bound steps (decoding,
#: folding, encoding states) never hold the event loop for long: profile reads wait at most one chunk.
#: Each event still lands in exactly one transaction, once; a retried batch skips the chunks already applied.
APPLY_CHUNK = 100


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the event at `index` of a batch was not applied."""

    index: int
    event_id: str
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    rejected: tuple[Rejection, ...]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An accepted event as stored, with its recent-activity summary."""

    event: AcceptedEvent
    summary: str


@dataclass(frozen=True, slots=True)
class Activity:
    event_id: str
    kind: str
    occurred_at: datetime
    summary: str


@dataclass(frozen=True, slots=True)
class StoredProfile:
    state: ProfileState
    updated_at: datetime
    recent_activity: tuple[Activity, ...]


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A customer's profile as of now (`features` only when asked for)."""

    customer_id: str
    traits: Traits
    recent_activity: tuple[Activity, ...]
    first_seen_at: datetime | None
    updated_at: datetime
    features: dict[str, float] | None


class Resolver(Protocol):
    """Finds (or creates) the customer behind identifiers seen together."""

    async def resolve(self, identifiers: Sequence[Identifier]) -> str:
        """The customer id; raises InvalidArgument naming e.g. "identifiers[1].value" when one is malformed and
        Unavailable when no answer can be had (the batch then fails as a whole)."""
        ...


class IngestTransaction(Protocol):
    """One database transaction applying a batch; committed when the block exits without error."""

    async def add_events(self, records: Sequence[EventRecord]) -> set[str]:
        """Store the events whose id is not stored yet; returns the ids actually inserted."""
        ...

    async def lock_states(self, customer_ids: Sequence[str], now: datetime) -> dict[str, ProfileState]:
        """Lock the customers' states until commit, creating empty ones (stamped `now`) for new customers."""
        ...

    async def save_states(self, states: Mapping[str, ProfileState], now: datetime) -> None:
        ...


class ProfileRepository(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[IngestTransaction]:
        ...

    async def load_state(self, customer_id: str) -> ProfileState | None:
        ...

    async def load_profile(self, customer_id: str, recent_activity: int) -> StoredProfile | None:
        ...


class ProfileService:
    """The profile service's use cases, independent of gRPC and SQL."""

    def __init__(
        self,
        repository: ProfileRepository,
        *,
        max_batch: int,
        recent_activity: int,
        clock: Callable[[], datetime] = utcnow,
        changes: ChangeFeed | None = None,
    ) -> None:
        self._repository = repository
        self._max_batch = max_batch
        self._recent_activity = recent_activity
        self._clock = clock
        #: The customers of every committed batch are published here (`WatchChanges`).
        self.changes = changes or ChangeFeed()

    async def ingest(self, events: Sequence[Event], resolver: Resolver) -> IngestResult:
        if not events:
            raise InvalidArgument("events", "at least one event")
        if len(events) > self._max_batch:
            raise InvalidArgument("events", f"at most {self._max_batch} events per batch, got {len(events)}")
        now = self._clock()
        rejected: list[Rejection] = []
        valid: list[tuple[int, Event]] = []
        for index, event in enumerate(events):
            try:
                validate_event(event, now)
            except InvalidArgument as exc:
                rejected.append(Rejection(index, event.event_id, exc.field, exc.reason))
            else:
                valid.append((index, event))

        resolved = await self._resolve_customers([event for _, event in valid if not event.customer_id], resolver)
        records: list[EventRecord] = []
        seen: set[str] = set()
        duplicates = 0
        for index, event in valid:
            customer_id = event.customer_id or resolved[event.identifiers]
            if isinstance(customer_id, InvalidArgument):
                rejected.append(Rejection(index, event.event_id, customer_id.field, customer_id.reason))
                continue
            if event.event_id in seen:
                duplicates += 1  # the same id twice in one batch: the first one counts
                continue
            seen.add(event.event_id)
            assert event.occurred_at is not None and event.payload is not None  # guaranteed by validate_event
            accepted = AcceptedEvent(event.event_id, customer_id, event.occurred_at, event.source, event.payload)
            records.append(EventRecord(accepted, summarize(event.payload)))

        applied = 0
        for start in range(0, len(records), APPLY_CHUNK):
            applied += await self._apply(records[start : start + APPLY_CHUNK], now)
        rejected.sort(key=lambda rejection: rejection.index)
        return IngestResult(applied, duplicates + len(records) - applied, tuple(rejected))

    async def _resolve_customers(
        self, events: Sequence[Event], resolver: Resolver
    ) -> dict[tuple[Identifier, ...], str | InvalidArgument]:
        """Resolve each distinct identifier set once; malformed sets come back as their InvalidArgument."""
        keys = list(dict.fromkeys(event.identifiers for event in events))
        if not keys:
            return {}
        gate = asyncio.Semaphore(RESOLVE_CONCURRENCY)

        async def resolve(identifiers: tuple[Identifier, ...]) -> str | InvalidArgument:
            async with gate:
                try:
                    return await resolver.resolve(identifiers)
                except InvalidArgument as exc:
                    return exc

        try:
            # A TaskGroup cancels the remaining calls as soon as one fails: identity down fails the call fast.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(resolve(key)) for key in keys]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return {key: task.result() for key, task in zip(keys, tasks, strict=True)}

    async def _apply(self, records: Sequence[EventRecord], now: datetime) -> int:
        async with self._repository.transaction() as tx:
            inserted = await tx.add_events(records)
            if not inserted:
                return 0
            by_customer: dict[str, list[AcceptedEvent]] = {}
            for record in records:
                if record.event.event_id in inserted:
                    by_customer.setdefault(record.event.customer_id, []).append(record.event)
            states = await tx.lock_states(sorted(by_customer), now)
            for customer_id, new_events in by_customer.items():
                state = states[customer_id]
                for event in sorted(new_events, key=lambda e: (e.occurred_at, e.event_id)):
                    state.apply(event, now)
            await tx.save_states(states, now)
        self.changes.publish(by_customer)  # committed: readers' caches may now drop these customers
        return len(inserted)

    async def get_profile(self, customer_id: str, include_features: bool, include_activity: bool = True) -> ProfileView:
        _check_customer_id(customer_id)
        stored = await self._repository.load_profile(customer_id, self._recent_activity if include_activity else 0)
        if stored is None:
            raise NotFound(f"customer {customer_id!r} has no profile")
        now = self._clock()
        return ProfileView(
            customer_id=customer_id,
            traits=stored.state.traits(now),
            recent_activity=stored.recent_activity,
            first_seen_at=stored.state.first_seen_at,
            updated_at=stored.updated_at,
            features=compute_features(stored.state, now) if include_features else None,
        )

    async def get_features(self, customer_id: str) -> dict[str, float]:
        _check_customer_id(customer_id)
        state = await self._repository.load_state(customer_id)
        if state is None:
            raise NotFound(f"customer {customer_id!r} has no profile")
        return compute_features(state, self._clock())


def _check_customer_id(customer_id: str) -> None:
    if not customer_id:
        raise InvalidArgument("customer_id", "required")
    if len(customer_id) > MAX_ID_LENGTH:
        raise InvalidArgument("customer_id", f"at most {MAX_ID_LENGTH} characters")
