"""The profile use cases (ingest a batch, read a profile, read features) and the ports they need.

Ingesting a batch: validate each event on its own (a malformed one is rejected, the others go on), resolve the
customers of events that only carry identifiers (all or nothing: if the identity service cannot answer, the
call fails and nothing is applied, so the producer retries), drop repeated ids within the batch, then hand the
events to the ingest lanes (`domain.lanes`), which apply them together with those of concurrent batches: in ONE
transaction of at most `APPLY_CHUNK` events, insert the events ignoring ids already stored, lock the affected
customers' states (a merged customer's events go to its survivor's state, see `domain.lineage`) and fold only the
newly inserted events into them, in event-time order; then re-evaluate, for those customers only, the segments
reading a trait the transaction changed (or the clock), storing membership changes in the same transaction. The
customers are announced by the transaction and reach `changes` (every replica's) once it commits.

A stream of batches (`ingest_stream`) is applied the same way, one batch at a time as it is read, so at most one
batch is in flight and the producer is held by gRPC flow control meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from libs.changefeed import ChangeFeed
from libs.errors import InvalidArgument, NotFound, Unavailable
from libs.protoconv import utcnow
from services.profile.domain.events import AcceptedEvent, Event, Identifier, summarize
from services.profile.domain.features import COLUMN_NAMES, FEATURE_NAMES, compute_columns, compute_features
from services.profile.domain.lanes import IngestLanes
from services.profile.domain.lineage import LineageMoved
from services.profile.domain.segments import (
    SegmentDefinition,
    SegmentRegistry,
    check_name,
    compile_segment,
)
from services.profile.domain.state import ModelTrait, ProfileState, Traits
from services.profile.domain.validation import MAX_ID_LENGTH, validate_event

_log = logging.getLogger(__name__)

#: Resolve calls in flight at once for one batch: enough to hide latency, not enough to flood identity.
RESOLVE_CONCURRENCY = 16
#: Most events one ingest transaction applies (domain.lanes gathers concurrent batches up to this). Each event
#: still lands in exactly one transaction, once; a retried batch skips the transactions already committed.
APPLY_CHUNK = 500
#: Customers folded between two yields to the event loop, so that reads wait for at most a slice, not a
#: whole transaction's CPU-bound work. A slice of 5 (≈ 0.3 ms) rather than 25: read_bench's cache misses' p99 fell
#: from 5.2–6.1 to 4.0–4.9 ms in four alternating pairs, with ingest alone as fast (8,815 vs 8,861 events/s).
FOLD_SLICE = 5
#: Lighter items (events converted from the wire, states encoded for saving) handled between two yields.
ITEM_SLICE = 20
#: Customers re-evaluated per transaction when a segment is put or deleted.
SEGMENT_PAGE = 500
#: Attempts of one chunk whose customers' lineage keeps changing under it (a merge or unmerge committing).
LINEAGE_RETRIES = 3
MAX_MEMBERS_PAGE = 1000
DEFAULT_MEMBERS_PAGE = 100
MAX_VERSIONS_PAGE = 1000
DEFAULT_VERSIONS_PAGE = 100
#: Customers one RefoldProfiles call rebuilds at most, and by default with `all`.
MAX_REFOLD_PAGE = 1000
DEFAULT_REFOLD_PAGE = 200
#: ListFeatures pages: big enough that a batch job's round trips do not dominate, small enough for one message.
DEFAULT_FEATURES_PAGE = 1000
MAX_FEATURES_PAGE = 10_000
#: Customers decoded and computed between two yields to the event loop (a few milliseconds of CPU each).
FEATURES_CHUNK = 100


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
    #: Whose profile it is: the id asked for, or the customer it was merged into.
    customer_id: str = ""
    #: The state row's version (0: not known).
    version: int = 0


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A customer's profile as of now (`features` only when asked for)."""

    customer_id: str
    traits: Traits
    recent_activity: tuple[Activity, ...]
    first_seen_at: datetime | None
    updated_at: datetime
    features: dict[str, float] | None
    #: Segment name -> member since, for the segments currently defined.
    segments: dict[str, datetime] | None = None
    #: Model use case -> its newest prediction (written back by batch scoring).
    model_traits: dict[str, ModelTrait] | None = None


@dataclass(frozen=True, slots=True)
class FeaturePage:
    """One page of ListFeatures: a row of `names` values per customer, and the next page's token ("" at the end)."""

    customer_ids: list[str]
    names: tuple[str, ...]
    rows: list[list[float]]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class SegmentMember:
    customer_id: str
    since: datetime


#: (segment, customer id, since) entered; (segment, customer id) left.
Entered = tuple[str, str, datetime]
Left = tuple[str, str]


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

    async def roots(self, customer_ids: Sequence[str]) -> dict[str, str]:
        """For those of the customers merged into another: the customer whose profile holds their events."""
        ...

    async def erased(self, customer_ids: Sequence[str]) -> set[str]:
        """Those of the customers that were erased (Forget)."""
        ...

    async def update_memberships(self, entered: Sequence[Entered], left: Sequence[Left]) -> None:
        """Record segment entries (with their since) and exits."""
        ...

    def announce(self, customer_ids: Iterable[str]) -> None:
        """Publish these customers as changed once the transaction commits (to every replica's change feed)."""
        ...


class ProfileRepository(Protocol):
    #: The customers every committed transaction announced (every replica's, where the storage relays them).
    changes: ChangeFeed

    def transaction(self) -> AbstractAsyncContextManager[IngestTransaction]:
        ...

    async def load_state(self, customer_id: str) -> ProfileState | None:
        ...

    async def erased(self, customer_ids: Sequence[str]) -> set[str]:
        """Those of the customers that were erased (Forget)."""
        ...

    async def load_profile(self, customer_id: str, recent_activity: int) -> StoredProfile | None:
        ...

    async def load_segments(self) -> list[SegmentDefinition]:
        ...

    async def put_segment(
        self, name: str, expression: str, description: str, expected_version: int, now: datetime
    ) -> SegmentDefinition:
        """Store a new version; FailedPrecondition when `expected_version` is set and is not the current one."""
        ...

    async def segment_versions(self, name: str, below: int, limit: int) -> tuple[list[SegmentDefinition], int]:
        """Up to `limit` of the versions put under this name older than `below` (0: from the newest), newest first,
        and the current version (0 when deleted)."""
        ...

    async def delete_segment(self, name: str) -> bool:
        """Delete the definition (not the members, nor its past versions); False when there was none."""
        ...

    async def segments_version(self) -> str:
        """A value that changes whenever a segment definition is put or deleted (cheap: polled by replicas)."""
        ...

    async def state_documents(self, after: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` customers' stored state documents (`ProfileState.to_document`) with ids after `after`, in
        id order."""
        ...

    async def customer_ids(self, after: str, limit: int) -> list[str]:
        """Customer ids with a profile, in order, after `after`."""
        ...

    async def segment_members(self, segment: str, after: str, limit: int) -> list[SegmentMember]:
        """A segment's members in customer-id order, after `after`."""
        ...

    async def segment_exists(self, name: str) -> bool:
        """Whether a definition of this name is stored now (one row read, not every definition)."""
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
        ingest_lanes: int = 1,
    ) -> None:
        self._repository = repository
        self._lanes = IngestLanes(self._apply, ingest_lanes, APPLY_CHUNK)
        self._max_batch = max_batch
        self._recent_activity = recent_activity
        self._clock = clock
        #: The customers of every committed transaction reach this feed (`WatchChanges`).
        self.changes = repository.changes
        self.segments = SegmentRegistry()
        #: Serialises segment puts, deletes and reloads (a put re-evaluates every customer).
        self._segment_lock = asyncio.Lock()
        #: The stored definitions' version this registry was loaded at (`refresh_segments`).
        self._segments_version = ""
        #: Customers whose segments ingest evaluated since the last poll of the definitions, and in the poll
        #: interval before that: the ones that may have missed a segment put through another replica.
        self._evaluated: set[str] = set()
        self._evaluated_before: set[str] = set()

    async def load_segments(self) -> None:
        """Compile the stored segment definitions (on start)."""
        self._segments_version = await self._repository.segments_version()
        for definition in await self._repository.load_segments():
            self.segments.put(compile_segment(definition))

    async def ingest_stream(
        self, batches: AsyncIterable[Sequence[Event]], resolver: Callable[[], Resolver]
    ) -> IngestResult:
        """Apply a stream of batches one at a time (the next batch is read only when the previous one is
        applied); rejection indices count events from the start of the stream. `resolver()` gives a resolver for
        each batch (bound to the time left then)."""
        accepted = duplicates = offset = 0
        rejected: list[Rejection] = []
        async for batch in batches:
            if not batch:
                continue  # an empty message carries nothing (a keep-alive)
            result = await self.ingest(batch, resolver())
            accepted += result.accepted
            duplicates += result.duplicates
            rejected.extend(
                Rejection(offset + r.index, r.event_id, r.field, r.reason) for r in result.rejected
            )
            offset += len(batch)
        return IngestResult(accepted, duplicates, tuple(rejected))

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
        # An erased customer's events are refused, not stored again (a late feed, an outcome of an old decision).
        customers = {event.customer_id for _, event in valid if event.customer_id}
        customers.update(found for found in resolved.values() if isinstance(found, str))
        erased = await self._repository.erased(sorted(customers))
        for index, event in valid:
            customer_id = event.customer_id or resolved[event.identifiers]
            if isinstance(customer_id, InvalidArgument):
                rejected.append(Rejection(index, event.event_id, customer_id.field, customer_id.reason))
                continue
            if customer_id in erased:
                rejected.append(Rejection(index, event.event_id, "customer_id", f"customer {customer_id} was erased"))
                continue
            if event.event_id in seen:
                duplicates += 1  # the same id twice in one batch: the first one counts
                continue
            seen.add(event.event_id)
            assert event.occurred_at is not None and event.payload is not None  # guaranteed by validate_event
            accepted = AcceptedEvent(event.event_id, customer_id, event.occurred_at, event.source, event.payload)
            records.append(EventRecord(accepted, summarize(event.payload)))

        # Applied with the events of concurrent batches (domain.lanes); a transaction under way finishes even if
        # the caller gives up (its deadline passed), and the producer's retry skips what committed.
        applied = await self._lanes.submit(records)
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

    async def _apply(self, records: Sequence[EventRecord]) -> set[str]:
        """Apply in one transaction; the ids newly stored (the others were there already)."""
        now = self._clock()
        for _ in range(LINEAGE_RETRIES):
            try:
                return await self._apply_once(records, now)
            except LineageMoved:
                continue  # rolled back: apply again with the aliases as they are now
        raise Unavailable("customers of this batch are being merged, unmerged or erased; retry the batch")

    async def _apply_once(self, records: Sequence[EventRecord], now: datetime) -> set[str]:
        async with self._repository.transaction() as tx:
            inserted = await tx.add_events(records)
            if not inserted:
                return inserted
            fresh = [record.event for record in records if record.event.event_id in inserted]
            event_customers = {event.customer_id for event in fresh}
            # An event of a merged customer keeps its id (so an unmerge splits it back) and is folded into the
            # survivor's state. The aliases are read again under the state locks: a merge or unmerge that
            # committed while this waited for them means rolling back and starting again (domain.lineage).
            roots = await tx.roots(sorted(event_customers))
            by_customer: dict[str, list[AcceptedEvent]] = {}
            for event in fresh:
                by_customer.setdefault(roots.get(event.customer_id, event.customer_id), []).append(event)
            states = await tx.lock_states(sorted(by_customer), now)
            locked = sorted(event_customers | by_customer.keys())
            if await tx.roots(locked) != roots or await tx.erased(locked):
                raise LineageMoved  # (an erasure then gets the batch refused when the producer retries)
            entered: list[Entered] = []
            left: list[Left] = []
            segments = self.segments
            for n, (customer_id, new_events) in enumerate(by_customer.items(), 1):
                if n % FOLD_SLICE == 0:
                    await asyncio.sleep(0)  # let reads in: a big transaction folds for tens of milliseconds
                state = states[customer_id]
                # Segments are re-evaluated only when what they read changed (or reads the clock): the values
                # before the batch are kept to compare. A new customer was never evaluated: all of them.
                before = segments.snapshot(state, now) if len(segments) and state.first_seen_at is not None else None
                for event in sorted(new_events, key=lambda e: (e.occurred_at, e.event_id)):
                    state.apply(event, now)
                if len(segments):
                    came, went = segments.evaluate(state, now, before=before)
                    entered.extend((name, customer_id, now) for name in came)
                    left.extend((name, customer_id) for name in went)
            if entered or left:
                await tx.update_memberships(entered, left)
            self._evaluated.update(states)  # see refresh_segments
            await tx.save_states(states, now)
            # Once committed, readers' caches drop these customers (a merged id's answer is its survivor's).
            tx.announce(event_customers | by_customer.keys())
        return inserted

    async def get_profile(self, customer_id: str, include_features: bool, include_activity: bool = True) -> ProfileView:
        _check_customer_id(customer_id)
        stored = await self._repository.load_profile(customer_id, self._recent_activity if include_activity else 0)
        if stored is None:
            raise NotFound(f"customer {customer_id!r} has no profile")
        now = self._clock()
        return ProfileView(
            customer_id=stored.customer_id or customer_id,
            traits=stored.state.traits(now),
            recent_activity=stored.recent_activity,
            first_seen_at=stored.state.first_seen_at,
            updated_at=stored.updated_at,
            features=compute_features(stored.state, now) if include_features else None,
            segments={
                name: since for name, since in sorted(stored.state.segments.items()) if name in self.segments
            },
            model_traits=dict(sorted(stored.state.model_traits.items())),
        )

    async def get_features(self, customer_id: str, names: Sequence[str] = ()) -> dict[str, float]:
        """Every feature, or only `names` in their order (InvalidArgument for an unknown name)."""
        _check_customer_id(customer_id)
        for i, name in enumerate(names):
            if name not in _FEATURES:
                raise InvalidArgument(f"names[{i}]", f"unknown feature {name!r}")
        state = await self._repository.load_state(customer_id)
        if state is None:
            raise NotFound(f"customer {customer_id!r} has no profile")
        features = compute_features(state, self._clock())
        return {name: features[name] for name in names} if names else features

    async def list_features(self, names: Sequence[str], page_size: int, page_token: str) -> FeaturePage:
        """One page of every customer's feature (and trait column) values, in customer id order."""
        for i, name in enumerate(names):
            if name not in _COLUMNS:
                raise InvalidArgument(f"names[{i}]", f"unknown feature {name!r}")
        if page_size < 0:
            raise InvalidArgument("page_size", "must be >= 0")
        size = min(page_size or DEFAULT_FEATURES_PAGE, MAX_FEATURES_PAGE)
        documents = await self._repository.state_documents(_decode_token(page_token), size + 1)
        more = len(documents) > size
        documents = documents[:size]
        columns = tuple(names) or FEATURE_NAMES
        now = self._clock()
        rows = []
        for start in range(0, len(documents), FEATURES_CHUNK):
            if start:
                await asyncio.sleep(0)  # let waiting requests (a Decide's GetProfile) run between chunks
            for _, document in documents[start : start + FEATURES_CHUNK]:
                values = compute_columns(ProfileState.from_document(document), now)
                rows.append([values[name] for name in columns])
        token = _encode_token(documents[-1][0]) if more else ""
        return FeaturePage([customer_id for customer_id, _ in documents], columns, rows, token)

    # ------------------------------------------------------------------ segments

    async def put_segment(
        self, name: str, expression: str, description: str, expected_version: int = 0
    ) -> tuple[SegmentDefinition, int]:
        """Store a new version of a segment and re-evaluate every customer against it; returns it and its
        member count.

        The run takes SEGMENT_PAGE customers per transaction, so ingest waits for one page's row locks at most.
        It is right under concurrent ingest because the new version is in the registry before the first page: a
        batch committed before a customer's page is seen by the page, one committed after it re-evaluates the
        segment itself when it changes what the segment reads (and an unchanged input keeps the page's answer)."""
        now = self._clock()
        compile_segment(SegmentDefinition(name, expression, description, 0, now))  # validate before storing
        async with self._segment_lock:
            definition = await self._repository.put_segment(name, expression, description, expected_version, now)
            self.segments.put(compile_segment(definition))
            members = 0
            after = ""
            while ids := await self._repository.customer_ids(after, SEGMENT_PAGE):
                states, _, _ = await self._reevaluate(
                    ids, lambda state, at: self.segments.evaluate(state, at, only=name)
                )
                members += sum(1 for state in states.values() if name in state.segments)
                after = ids[-1]
        return definition, members

    async def delete_segment(self, name: str) -> None:
        check_name(name, "name")
        async with self._segment_lock:
            if not await self._repository.delete_segment(name):
                raise NotFound(f"segment {name!r} does not exist")
            self.segments.remove(name)
            await self._remove_members(name)

    async def _remove_members(self, name: str) -> None:
        def drop(state: ProfileState, _: datetime) -> tuple[set[str], set[str]]:
            state.segments.pop(name, None)
            return set(), {name}  # the member row goes even if the state no longer had it

        while members := await self._repository.segment_members(name, "", SEGMENT_PAGE):
            _, _, missing = await self._reevaluate([member.customer_id for member in members], drop)
            if missing:  # rows left by a customer whose profile is gone (merged away): just the rows
                async with self._repository.transaction() as tx:
                    await tx.update_memberships([], [(name, customer_id) for customer_id in sorted(missing)])
            if len(members) < SEGMENT_PAGE:
                break

    async def _reevaluate(
        self, customer_ids: Sequence[str], evaluate: Callable[[ProfileState, datetime], tuple[set[str], set[str]]]
    ) -> tuple[dict[str, ProfileState], set[str], set[str]]:
        """Apply `evaluate` (which updates a state's segments and returns the names entered and left) to these
        customers under their row locks, in one transaction; stores and publishes those whose membership changed.
        Returns the states, the customers whose membership changed, and those left out because they have no
        profile (any more)."""
        missing: set[str] = set()
        while True:
            try:
                wanted = [customer_id for customer_id in customer_ids if customer_id not in missing]
                if not wanted:
                    return {}, set(), missing
                states, changed = await self._reevaluate_once(wanted, evaluate)
                return states, changed, missing
            except _NoProfile as absent:
                missing |= absent.customer_ids  # rolled back: nothing was created for them

    async def _reevaluate_once(
        self, customer_ids: Sequence[str], evaluate: Callable[[ProfileState, datetime], tuple[set[str], set[str]]]
    ) -> tuple[dict[str, ProfileState], set[str]]:
        now = self._clock()
        changed: dict[str, ProfileState] = {}
        entered: list[Entered] = []
        left: list[Left] = []
        async with self._repository.transaction() as tx:
            states = await tx.lock_states(customer_ids, now)
            # The lock creates an empty state for a customer without one (merged away, erased, never seen): a
            # state with events always has a first_seen_at. Roll back rather than leave such a row behind.
            absent = {customer_id for customer_id, state in states.items() if state.first_seen_at is None}
            if absent:
                raise _NoProfile(absent)
            for customer_id, state in states.items():
                came, went = evaluate(state, now)
                if came or went:
                    changed[customer_id] = state
                    entered.extend((name, customer_id, now) for name in came)
                    left.extend((name, customer_id) for name in went)
            if entered or left:
                await tx.update_memberships(entered, left)
            if changed:
                await tx.save_states(changed, now)
            tx.announce(changed)
        return states, set(changed)

    async def sweep_segments(self) -> int:
        """Re-evaluate the time-dependent segments (e.g. `days_since_last_purchase > 30`) of every customer, whose
        membership would otherwise move only on the customer's next event; returns the customers that moved.

        Pages of SEGMENT_PAGE states are read without locks and evaluated; only the customers whose membership
        would move are then locked, evaluated again on their current state, and stored: the sweep writes little
        and holds no lock while it reads."""
        if not self.segments.time_dependent:
            return 0
        moved = 0
        after = ""
        while documents := await self._repository.state_documents(after, SEGMENT_PAGE):
            after = documents[-1][0]
            now = self._clock()
            candidates: list[str] = []
            for i, (customer_id, document) in enumerate(documents):
                if i and i % FEATURES_CHUNK == 0:
                    await asyncio.sleep(0)  # decoding is CPU: let reads run between chunks
                if any(self.segments.evaluate(ProfileState.from_document(document), now, time_only=True)):
                    candidates.append(customer_id)
            if candidates:

                def evaluate(state: ProfileState, at: datetime) -> tuple[set[str], set[str]]:
                    return self.segments.evaluate(state, at, time_only=True)

                _, changed, _ = await self._reevaluate(candidates, evaluate)
                moved += len(changed)
        return moved

    async def refresh_segments(self) -> bool:
        """Reload the segment definitions if they changed in the database (another replica put or deleted one);
        a cheap version query first. Returns whether they had changed.

        The replica that put a segment re-evaluates every customer, but a batch this replica folded meanwhile with
        the old definitions may have committed after that run passed its customers. Such a batch was evaluated
        after the previous poll's version read (the other replica's run started after it stored the definition,
        which this poll is the first to see), so within this poll interval or the one before: those customers are
        re-evaluated here for the new and changed segments. Members of a segment deleted elsewhere are removed
        again (this replica may have added some before it knew)."""
        async with self._segment_lock:
            version = await self._repository.segments_version()
            changed_version = version != self._segments_version
            stored = (
                {definition.name: definition for definition in await self._repository.load_segments()}
                if changed_version
                else {}
            )
            # No await from here to the rotation: every evaluation before it used the old registry and is listed.
            recent = self._evaluated_before | self._evaluated
            self._evaluated_before, self._evaluated = self._evaluated, set()
            if not changed_version:
                return False
            gone = [definition.name for definition in self.segments.definitions() if definition.name not in stored]
            for name in gone:
                self.segments.remove(name)
            changed: list[str] = []
            for name, definition in stored.items():
                current = self.segments.get(name)
                if current is not None and current.definition == definition:
                    continue
                try:
                    self.segments.put(compile_segment(definition))
                    changed.append(name)
                except InvalidArgument as exc:  # e.g. put by a newer release that knows more traits
                    _log.error("segment %s version %d cannot be loaded: %s", name, definition.version, exc)
            self._segments_version = version
            for name in gone:
                await self._remove_members(name)

            def evaluate(state: ProfileState, at: datetime) -> tuple[set[str], set[str]]:
                entered: set[str] = set()
                left = {name for name in gone if state.segments.pop(name, None) is not None}
                for name in changed:
                    came, went = self.segments.evaluate(state, at, only=name)
                    entered |= came
                    left |= went
                return entered, left

            if gone or changed:
                ids = sorted(recent)
                for start in range(0, len(ids), SEGMENT_PAGE):
                    await self._reevaluate(ids[start : start + SEGMENT_PAGE], evaluate)
            return True

    async def list_segments(self) -> list[SegmentDefinition]:
        """The stored definitions (not this replica's registry, which learns of another replica's put only at its
        next poll: a put through one replica is listed by every replica at once)."""
        return await self._repository.load_segments()

    async def segment_versions(
        self, name: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[SegmentDefinition], int, str]:
        """One page of a segment's versions, newest first, its current version (0 when it was deleted) and the token
        of the next page ("" on the last)."""
        check_name(name, "name")
        size, below = _page_size(page_size, DEFAULT_VERSIONS_PAGE, MAX_VERSIONS_PAGE), _decode_version_token(page_token)
        versions, current = await self._repository.segment_versions(name, below, size + 1)
        if not versions and not below:
            raise NotFound(f"segment {name!r} was never put")
        if len(versions) > size:
            return versions[:size], current, _encode_token(str(versions[size - 1].version))
        return versions, current, ""

    async def refold_targets(
        self, customer_ids: Sequence[str], every: bool, page_size: int, page_token: str
    ) -> tuple[list[str], str]:
        """The customers a RefoldProfiles call names, or with `every` one page of all of them in id order and the
        token of the next page ("" on the last)."""
        if every == bool(customer_ids):
            raise InvalidArgument("customer_ids", "name the customers or set all, not both or neither")
        if not every:
            if len(customer_ids) > MAX_REFOLD_PAGE:
                raise InvalidArgument("customer_ids", f"at most {MAX_REFOLD_PAGE}, got {len(customer_ids)}")
            for i, customer_id in enumerate(customer_ids):
                try:
                    _check_customer_id(customer_id)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"customer_ids[{i}]", exc.reason) from None
            return list(dict.fromkeys(customer_ids)), ""
        size, after = _page_size(page_size, DEFAULT_REFOLD_PAGE, MAX_REFOLD_PAGE), _decode_token(page_token)
        ids = await self._repository.customer_ids(after, size)
        return ids, _encode_token(ids[-1]) if len(ids) == size else ""

    async def list_segment_members(
        self, name: str, page_size: int, page_token: str
    ) -> tuple[list[SegmentMember], str]:
        """One page of members and the token of the next page ("" on the last)."""
        check_name(name, "segment")
        # The stored definitions decide, as for ListSegments: a segment put through another replica has members
        # (its put evaluated everyone) before this replica's poll loads it.
        if not await self._repository.segment_exists(name):
            raise NotFound(f"segment {name!r} does not exist")
        if page_size < 0:
            raise InvalidArgument("page_size", "must be >= 0")
        size = min(page_size or DEFAULT_MEMBERS_PAGE, MAX_MEMBERS_PAGE)
        after = _decode_token(page_token)
        members = await self._repository.segment_members(name, after, size + 1)
        if len(members) > size:
            return members[:size], _encode_token(members[size - 1].customer_id)
        return members, ""


class _NoProfile(Exception):
    """Some customers to re-evaluate have no profile: their transaction is rolled back and they are left out."""

    def __init__(self, customer_ids: set[str]) -> None:
        super().__init__(f"{len(customer_ids)} customers have no profile")
        self.customer_ids = customer_ids


_FEATURES = frozenset(FEATURE_NAMES)
_COLUMNS = frozenset(COLUMN_NAMES)


def _encode_token(customer_id: str) -> str:
    """Page tokens are opaque to clients: the last customer id of the page, base64url-encoded."""
    return base64.urlsafe_b64encode(customer_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        after = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        after = ""
    if not after or _encode_token(after) != token:  # the decoder skips foreign characters: check the round trip
        raise InvalidArgument("page_token", "not a token this service issued")
    return after


def _page_size(page_size: int, default: int, maximum: int) -> int:
    """The page size a request asks for (0: the default); INVALID_ARGUMENT outside 0..maximum."""
    if not 0 <= page_size <= maximum:
        raise InvalidArgument("page_size", f"0 (the default, {default}) to {maximum}")
    return page_size or default


def _decode_version_token(token: str) -> int:
    """The version a page of segment versions continues below (0: the first page)."""
    version = _decode_token(token)
    if version and not (version.isdigit() and int(version) > 0):
        raise InvalidArgument("page_token", "not a token this service issued")
    return int(version) if version else 0


def _check_customer_id(customer_id: str) -> None:
    if not customer_id:
        raise InvalidArgument("customer_id", "required")
    if len(customer_id) > MAX_ID_LENGTH:
        raise InvalidArgument("customer_id", f"at most {MAX_ID_LENGTH} characters")
