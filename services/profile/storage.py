"""Tables of the profile service and the SQLAlchemy Core adapter behind the domain's repository port.

Concurrency: each ingest transaction (events of one or more batches, see `domain.lanes`) does, in order:
1. inserts its events (ON CONFLICT DO NOTHING, in event-id order); the ids RETURNING gives are the ones to apply;
2. takes the customers' state rows in customer-id order with one upsert that creates empty rows for new customers
   and row-locks the existing ones (a no-op DO UPDATE), returning their states;
3. writes the folded states.
Taking locks in one global order means concurrent batches wait for each other instead of deadlocking, and an
event id is applied by exactly one of them. On SQLite, whose writers are serialised, the first statement is the
INSERT, so the write lock is held from the start of the transaction (what BEGIN IMMEDIATE would give): no batch
can read a state another is about to change. Each step is one statement for all its rows (on PostgreSQL over
array parameters, see `_PG_ADD_EVENTS`; on SQLite SQLAlchemy's multi-row insertmanyvalues), so a transaction of
hundreds of events costs three round trips, not hundreds (plus the look-ups of merged and
erased customers before and under the locks, see `domain.lineage`).

Lineage (identity's merges, unmerges and erasures) is applied on the same transaction type: its first statement
moves the lineage cursor row, which serialises appliers (and takes SQLite's write lock at once), then it locks the
customers' states in the same global order as ingest.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    any_,
    bindparam,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.cancellation import uncancelled
from libs.changefeed import ChangeFeed, PostgresRelay, notify, notify_items
from libs.db import as_utc, insert_for, reader, translate_errors
from libs.errors import FailedPrecondition
from services.profile.domain import AcceptedEvent, Activity, EventRecord, ProfileState, StoredProfile
from services.profile.domain.events import payload_from_document
from services.profile.domain.segments import SegmentDefinition
from services.profile.domain.service import ITEM_SLICE, Entered, Left, SegmentMember

metadata = MetaData()

profile_events = Table(
    "profile_events",
    metadata,
    Column("event_id", String(128), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("source", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("summary", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # Recent activity: a customer's newest events, read backwards along this index.
    Index("ix_profile_events_customer_time", "customer_id", "occurred_at", "event_id"),
)

profile_states = Table(
    "profile_states",
    metadata,
    Column("customer_id", String(128), primary_key=True),
    Column("state", JSON, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False),
)

def _definition_columns() -> list[Column]:
    """The columns of a segment definition, in profile_segments and profile_segment_versions alike."""
    return [
        Column("name", String(64), nullable=False),
        Column("expression", Text, nullable=False),
        Column("description", Text, nullable=False),
        Column("version", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    ]


#: The definitions in force, one per name.
profile_segments = Table(
    "profile_segments", metadata, *_definition_columns(), PrimaryKeyConstraint("name", name="pk_profile_segments")
)
#: Every put's definition, kept after a delete: a name's versions keep counting across a delete and a new put.
profile_segment_versions = Table(
    "profile_segment_versions",
    metadata,
    *_definition_columns(),
    PrimaryKeyConstraint("name", "version", name="pk_profile_segment_versions"),
)
_DEFINITION_COLUMNS = tuple(column.name for column in profile_segments.columns)

# Membership mirrors each state's `segments` (written in the same transaction), indexed for ListSegmentMembers.
profile_segment_members = Table(
    "profile_segment_members",
    metadata,
    Column("segment", String(64), nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("segment", "customer_id", name="pk_profile_segment_members"),
)

#: Identity merges as the profile follows them: this customer's events are part of the survivor's profile.
profile_aliases = Table(
    "profile_aliases",
    metadata,
    Column("merged_id", String(128), primary_key=True),  # identity merges a customer into one survivor at a time
    Column("survivor_id", String(128), nullable=False),
    Column("merge_id", String(64), nullable=False, unique=True),
    Column("merged_at", DateTime(timezone=True), nullable=False),
    Index("ix_profile_aliases_survivor_id", "survivor_id"),
)

#: The PostgreSQL channel of committed profile changes (see `libs.changefeed.notify`).
CHANGES_CHANNEL = "nextbest_profile_changes"
#: Where replicas that share their saved states announce them, right after their changes (`NOTIFY_SAVED_STATES`).
SAVED_CHANNEL = "nextbest_profile_saved"


def shared_document(document: str) -> str:
    """A saved state's JSON as another replica receives it: compressed (a hot customer's state outgrows a NOTIFY
    payload's 8,000 bytes; compressed it is a fifth of that) and in Base64, since payloads are text."""
    return base64.b64encode(zlib.compress(document.encode(), 1)).decode()


def _document_shared(payload: str) -> str:
    return zlib.decompress(base64.b64decode(payload)).decode()

#: The seq of the last entry of identity's lineage journal applied here (one row, moved with each entry).
profile_lineage_cursor = Table(
    "profile_lineage_cursor",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)
LINEAGE_SOURCE = "identity"

#: Customers erased by identity's Forget (the pseudonymous id only): their late events are refused.
profile_erasures = Table(
    "profile_erasures",
    metadata,
    Column("customer_id", String(128), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
)


class StateCache:
    """The profile states this process last committed, with the row version each was saved as.

    Under ingest the same customers come back batch after batch. When the row lock returns the version this
    process wrote, no other writer (another replica, a segment put) has touched the row since, so the cached state
    is current and its JSON document need not travel and be decoded again: that decode was a quarter of the ingest
    CPU. Any other version reads the row. Entries are handed out only under the row lock and are dropped whenever a
    transaction that held them does not commit, so a state mutated by a failed batch is never reused.
    """

    def __init__(self, max_states: int) -> None:
        self._max_states = max_states
        self._states: OrderedDict[str, tuple[int, ProfileState]] = OrderedDict()

    def take(self, customer_id: str, version: int) -> ProfileState | None:
        entry = self._states.pop(customer_id, None)  # out while a transaction holds it
        return entry[1] if entry is not None and entry[0] == version else None

    def keep(self, saved: Mapping[str, tuple[int, ProfileState]]) -> None:
        if self._max_states <= 0:
            return
        for customer_id, entry in saved.items():
            self._states[customer_id] = entry
            self._states.move_to_end(customer_id)
        while len(self._states) > self._max_states:
            self._states.popitem(last=False)


class CachedProfile:
    """A committed profile as reads see it. The state is this entry's own copy: never handed to a transaction.
    One written through at commit holds the saved document as JSON and decodes it when first read: a customer
    written more often than read is not decoded at every commit (that work also held reads up)."""

    __slots__ = ("_state", "_saved", "updated_at", "activity", "version")

    def __init__(self, state: ProfileState | None, updated_at: datetime, activity: tuple[Activity, ...] | None,
                 saved: str = "", version: int = 0) -> None:
        self._state = state
        self._saved = saved
        self.updated_at = updated_at
        #: The newest events (at most the service's `recent_activity`), or None when no read has asked for them.
        self.activity = activity
        #: The state row's version (0: not known).
        self.version = version

    @classmethod
    def saved(cls, document: str, updated_at: datetime, activity: tuple[Activity, ...] | None, version: int):
        """From the JSON text the state was saved as: decoded, exactly what a read of the database would give."""
        return cls(None, updated_at, activity, document, version)

    @property
    def state(self) -> ProfileState:
        if self._state is None:
            self._state = ProfileState.from_document(orjson.loads(self._saved))
            self._saved = ""
        return self._state


def _newest_first(activity: Activity) -> tuple[datetime, str]:
    return activity.occurred_at, activity.event_id


class ReadCache:
    """Committed profiles by customer id, so that reading a hot customer costs no database round trip.

    Never stale after a write this process committed: a committing ingest replaces the entries of the states it
    saved (write-through: the saved document's JSON text, decoded into the entry's own copy when first read, and the
    new events merged into the recent activity); any other committed change of shape (a merge, unmerge or erasure)
    empties the cache; and a read that was loading while a write committed does not keep what it loaded, since it
    may predate the write. Only the profiles of customers that are not merged into another are kept.

    Other replicas' writes (PostgreSQL) drop their customers when their NOTIFY arrives, milliseconds after their
    commit. `session()` says which LISTEN session vouches for that (None: none does, so nothing is served or kept);
    when it changes, changes may have been missed and the cache starts afresh. On SQLite it is always 0: one process
    writes. Where replicas share their saved states (`saved_elsewhere`), a dropped entry comes back from the state
    another replica saved, if that save is the very next version of the row the entry held: a save in between that
    did not reach here (no state shared, or it did not fit a payload) leaves a gap, and the customer is read afresh.
    """

    def __init__(self, max_entries: int, activity_limit: int, session: Callable[[], int | None] = lambda: 0) -> None:
        self._max_entries = max_entries
        self._activity_limit = activity_limit
        self._session = session
        self._filled_in: int | None = None  # the session the entries were kept in
        self._entries: OrderedDict[str, CachedProfile] = OrderedDict()
        self._loading: dict[str, object] = {}  # customer -> token of the newest read in flight
        #: Entries the last announcement of another replica dropped, kept aside for the states that follow it
        #: (their version and recent activity).
        self._aside: dict[str, tuple[int, tuple[Activity, ...] | None]] = {}
        self.hits = 0
        self.misses = 0

    def _vouched(self) -> bool:
        session = self._session()
        if session != self._filled_in:
            self.invalidate()
            self._filled_in = session
        return session is not None

    def __len__(self) -> int:
        return len(self._entries)

    def held_version(self, customer_id: str) -> int:
        """The row version of the customer's entry (0: none held, or not known); does not count as a read."""
        entry = self._entries.get(customer_id)
        return entry.version if entry is not None else 0

    def get(self, customer_id: str, with_activity: bool) -> CachedProfile | None:
        entry = self._entries.get(customer_id) if self._vouched() else None
        if entry is None or (with_activity and entry.activity is None):
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(customer_id)
        return entry

    def loading(self, customer_id: str) -> object:
        """Call before reading the database; hand the token to `keep` with what was read."""
        token = self._loading[customer_id] = object()
        return token

    def keep(self, customer_id: str, token: object, entry: CachedProfile | None) -> None:
        """The read `token` came from is over: keep its `entry` (None: nothing to keep, it failed or found none)."""
        vouched = self._vouched()  # first: a new session drops the reads loading in the old one
        if self._loading.get(customer_id) is not token:
            return  # a write committed (or another read started, or the session changed) meanwhile
        del self._loading[customer_id]
        if entry is not None and self._max_entries > 0 and vouched:
            self._put(customer_id, entry)

    def committed(self, documents: Mapping[str, str], versions: Mapping[str, int],
                  events: Mapping[str, Sequence[Activity]], at: datetime) -> None:
        """An ingest committed: these states were saved (as this JSON text and row version, with these new events,
        by whose state they joined)."""
        for customer_id, document in documents.items():
            self._loading.pop(customer_id, None)
            self._aside.pop(customer_id, None)  # another replica's state, if it comes, is older than this one
            entry = self._entries.get(customer_id)
            if entry is None:
                continue  # nobody read it lately: no need to keep it
            version = versions[customer_id]
            if entry.version and entry.version + 1 != version:
                # Another replica wrote in between and its announcement is still on its way: the entry's activity
                # lacks those events. Read it afresh.
                del self._entries[customer_id]
                continue
            activity = self._with(entry.activity, events.get(customer_id))
            # An entry of unknown version stays unknown: its activity was not read in one snapshot with a version.
            self._entries[customer_id] = CachedProfile.saved(document, at, activity, version if entry.version else 0)

    def _with(self, activity: tuple[Activity, ...] | None, new: Sequence[Activity] | None) -> tuple[Activity, ...] | None:
        if activity is None or not new:
            return activity
        return tuple(sorted((*activity, *new), key=_newest_first, reverse=True)[: self._activity_limit])

    def dropped_elsewhere(self, customer_ids: Iterable[str], keep_aside: bool) -> None:
        """Another replica announced changes of these customers: forget them (and reads of them in flight); with
        `keep_aside`, set their entries' version and activity aside for the states that replica may share next."""
        # Only the states right after an announcement are of the transaction it announced (PostgreSQL delivers a
        # transaction's notifications in the order sent, announcement first): what an earlier one set aside goes.
        self._aside.clear()
        for customer_id in customer_ids:
            entry = self._entries.pop(customer_id, None)
            self._loading.pop(customer_id, None)
            if keep_aside and entry is not None and entry.version:
                self._aside[customer_id] = (entry.version, entry.activity)

    def saved_elsewhere(self, saved: Iterable[Sequence[Any]], at: datetime) -> None:
        """Another replica committed these states right after announcing them, each [customer, row version, the JSON
        as `shared_document` sends it, new events as [event id, kind, ISO time, summary]]: an entry set aside comes
        back if this is the next version of the row it held (only those are decoded: most states shared are of
        customers not held here)."""
        if not self._vouched():
            return
        for customer_id, version, document, events in saved:
            held = self._aside.pop(customer_id, None)
            if held is None or held[0] + 1 != version or customer_id in self._loading or customer_id in self._entries:
                continue  # a gap, or a read under way or kept meanwhile (it read this version or a later one)
            new = [Activity(e, k, datetime.fromisoformat(t), m) for e, k, t, m in events]
            activity = self._with(held[1], new)
            self._put(customer_id, CachedProfile.saved(_document_shared(document), at, activity, version))

    def invalidate(self, customer_ids: Iterable[str] | None = None) -> None:
        """Forget these customers (None: everyone), including reads of them in flight."""
        if customer_ids is None:
            self._entries.clear()
            self._loading.clear()
            self._aside.clear()
            return
        for customer_id in customer_ids:
            self._entries.pop(customer_id, None)
            self._loading.pop(customer_id, None)
            self._aside.pop(customer_id, None)

    def _put(self, customer_id: str, entry: CachedProfile) -> None:
        self._entries[customer_id] = entry
        self._entries.move_to_end(customer_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


#: On PostgreSQL each ingest step is one statement over array parameters (`unnest`): its text is the same for any
#: number of rows, so asyncpg prepares it once (multi-row VALUES of varying length were a new statement to prepare
#: for nearly every transaction), and the driver encodes the arrays in C instead of SQLAlchemy processing every
#: row's parameters in Python. Rows are taken in array order: events by id, states by customer id (the lock order).
_PG_ADD_EVENTS = text(
    """
    INSERT INTO profile_events (event_id, customer_id, kind, occurred_at, source, payload, summary, received_at)
    SELECT e.event_id, e.customer_id, e.kind, e.occurred_at, e.source, CAST(e.payload AS json), e.summary,
           CAST(:received_at AS timestamptz)
    FROM unnest(CAST(:event_ids AS text[]), CAST(:customer_ids AS text[]), CAST(:kinds AS text[]),
                CAST(:occurred_at AS timestamptz[]), CAST(:sources AS text[]), CAST(:payloads AS text[]),
                CAST(:summaries AS text[])) AS e(event_id, customer_id, kind, occurred_at, source, payload, summary)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
    """
)
_PG_LOCK_STATES = text(
    """
    INSERT INTO profile_states (customer_id, state, first_seen_at, updated_at, version)
    SELECT c, CAST('{}' AS json), CAST(:now AS timestamptz), CAST(:now AS timestamptz), 0
    FROM unnest(CAST(:customer_ids AS text[])) AS c
    ON CONFLICT (customer_id) DO UPDATE SET version = profile_states.version
    RETURNING customer_id, version
    """
)
_PG_SAVE_STATES = text(
    """
    INSERT INTO profile_states (customer_id, state, first_seen_at, updated_at, version)
    SELECT s.customer_id, CAST(s.state AS json), s.first_seen_at, CAST(:now AS timestamptz), 1
    FROM unnest(CAST(:customer_ids AS text[]), CAST(:states AS text[]), CAST(:first_seen_at AS timestamptz[]))
         AS s(customer_id, state, first_seen_at)
    ON CONFLICT (customer_id) DO UPDATE SET state = excluded.state, first_seen_at = excluded.first_seen_at,
        updated_at = excluded.updated_at, version = profile_states.version + 1
    """
)


#: A profile read with its recent activity on PostgreSQL. A customer others were merged into (their events are part
#: of its activity) or one merged into another (no row of its own) is read the general way instead.
_PG_PROFILE = text(
    """
    SELECT s.state, s.updated_at, s.version,
           EXISTS (SELECT 1 FROM profile_aliases a WHERE a.survivor_id = s.customer_id) AS merged_into_it,
           (SELECT coalesce(json_agg(json_build_array(e.event_id, e.kind, e.occurred_at, e.summary)
                                     ORDER BY e.occurred_at DESC, e.event_id DESC), '[]')
            FROM (SELECT event_id, kind, occurred_at, summary FROM profile_events
                  WHERE customer_id = s.customer_id
                  ORDER BY occurred_at DESC, event_id DESC LIMIT :limit) AS e) AS recent
    FROM profile_states s
    WHERE s.customer_id = :customer_id
    """
).columns(state=JSON, updated_at=DateTime(timezone=True), version=Integer, merged_into_it=Boolean, recent=JSON)


class _IngestStatements:
    """The statements every ingest transaction runs, built once per engine (building and hashing them per
    transaction cost ≈ 0.8 ms of CPU)."""

    def __init__(self, insert: Callable[[Table], Any], postgres: bool) -> None:
        self.postgres = postgres
        self.add_events = (
            insert(profile_events).on_conflict_do_nothing(index_elements=["event_id"]).returning(profile_events.c.event_id)
        )
        # Creates empty rows for new customers; the no-op update row-locks existing ones until commit.
        self.lock_states = (
            insert(profile_states)
            .on_conflict_do_update(index_elements=["customer_id"], set_={"version": profile_states.c.version})
            .returning(profile_states.c.customer_id, profile_states.c.version)
        )
        save = insert(profile_states)
        self.save_states = save.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={
                "state": save.excluded.state,
                "first_seen_at": save.excluded.first_seen_at,
                "updated_at": save.excluded.updated_at,
                "version": profile_states.c.version + 1,
            },
        ).returning(profile_states.c.customer_id)  # RETURNING makes SQLAlchemy send one multi-row statement


class SqlIngestTransaction:
    """The batch-applying steps on one open transaction (see the module docstring for the locking order)."""

    def __init__(
        self,
        connection: AsyncConnection,
        insert: Callable[[Table], Any],
        cache: StateCache,
        statements: _IngestStatements,
    ) -> None:
        self._connection = connection
        self._insert = insert
        self._statements = statements
        self._cache = cache
        self._locked: dict[str, int] = {}  # customer -> row version under this transaction's lock
        #: What this transaction wrote: customer -> (new row version, state); cached once it commits.
        self.saved: dict[str, tuple[int, ProfileState]] = {}
        #: The saved states' documents as JSON text and the events stored here, for the read cache once this commits.
        self.documents: dict[str, str] = {}
        self._stored: list[EventRecord] = []
        self._roots: dict[str, str] = {}
        self.saved_at: datetime | None = None
        #: True when a lineage step (merge, unmerge, erasure) ran: the read cache starts afresh after the commit.
        self.reshaped = False
        #: Customers to publish as changed once this commits.
        self.announced: set[str] = set()

    def announce(self, customer_ids: Iterable[str]) -> None:
        self.announced.update(customer_ids)

    def new_activity(self) -> dict[str, list[Activity]]:
        """The stored events as recent activity, by the customer whose profile they joined."""
        by_owner: dict[str, list[Activity]] = {}
        for record in self._stored:
            event = record.event
            owner = self._roots.get(event.customer_id, event.customer_id)
            activity = Activity(event.event_id, event.kind, event.occurred_at, record.summary)
            by_owner.setdefault(owner, []).append(activity)
        return by_owner

    async def add_events(self, records: Sequence[EventRecord]) -> set[str]:
        received_at = datetime.now(UTC)
        if self._statements.postgres:
            ordered = sorted(records, key=lambda record: record.event.event_id)
            events = [record.event for record in ordered]
            result = await self._connection.execute(
                _PG_ADD_EVENTS,
                {
                    "event_ids": [event.event_id for event in events],
                    "customer_ids": [event.customer_id for event in events],
                    "kinds": [event.kind for event in events],
                    "occurred_at": [event.occurred_at for event in events],
                    "sources": [event.source for event in events],
                    "payloads": [orjson.dumps(event.payload_document()).decode() for event in events],
                    "summaries": [record.summary for record in ordered],
                    "received_at": received_at,
                },
            )
            return self._stored_of(records, set(result.scalars()))
        rows = [
            {
                "event_id": record.event.event_id,
                "customer_id": record.event.customer_id,
                "kind": record.event.kind,
                "occurred_at": record.event.occurred_at,
                "source": record.event.source,
                "payload": record.event.payload_document(),
                "summary": record.summary,
                "received_at": received_at,
            }
            for record in sorted(records, key=lambda record: record.event.event_id)
        ]
        result = await self._connection.execute(self._statements.add_events, rows)
        return self._stored_of(records, set(result.scalars()))

    def _stored_of(self, records: Sequence[EventRecord], inserted: set[str]) -> set[str]:
        self._stored.extend(record for record in records if record.event.event_id in inserted)
        return inserted

    async def lock_states(self, customer_ids: Sequence[str], now: datetime) -> dict[str, ProfileState]:
        # Rows are taken in the order given (sorted), and the old version comes back in the same round trip.
        if self._statements.postgres:
            found = await self._connection.execute(_PG_LOCK_STATES, {"customer_ids": list(customer_ids), "now": now})
        else:
            rows = [
                {"customer_id": customer_id, "state": {}, "first_seen_at": now, "updated_at": now, "version": 0}
                for customer_id in customer_ids
            ]
            found = await self._connection.execute(self._statements.lock_states, rows)
        locked = {customer_id: version for customer_id, version in found}
        self._locked.update(locked)
        states: dict[str, ProfileState] = {}
        stale: list[str] = []
        for customer_id, version in locked.items():
            cached = self._cache.take(customer_id, version)
            if cached is not None:
                states[customer_id] = cached
            elif version == 0:
                states[customer_id] = ProfileState()  # created by this lock: committed rows are version 1 or more
            else:
                stale.append(customer_id)
        if stale:
            found = await self._connection.execute(
                select(profile_states.c.customer_id, profile_states.c.state).where(
                    profile_states.c.customer_id.in_(stale)
                )
            )
            states.update((customer_id, ProfileState.from_document(state)) for customer_id, state in found)
        return states

    async def save_states(self, states: Mapping[str, ProfileState], now: datetime) -> None:
        documents: dict[str, dict[str, Any]] = {}
        encoded: dict[str, str] = {}  # once: the PostgreSQL statement's parameter and the read cache's copy
        for n, (customer_id, state) in enumerate(states.items(), 1):
            documents[customer_id] = state.to_document()
            encoded[customer_id] = orjson.dumps(documents[customer_id]).decode()
            if n % ITEM_SLICE == 0:
                await asyncio.sleep(0)  # let reads in between slices (a big transaction encodes for milliseconds)
        if self._statements.postgres:
            await self._connection.execute(
                _PG_SAVE_STATES,
                {
                    "customer_ids": list(states),
                    "states": list(encoded.values()),
                    "first_seen_at": [state.first_seen_at for state in states.values()],
                    "now": now,
                },
            )
        else:
            rows = [
                {
                    "customer_id": customer_id,
                    "state": documents[customer_id],
                    "first_seen_at": state.first_seen_at,
                    "updated_at": now,
                    "version": 1,
                }
                for customer_id, state in states.items()
            ]
            await self._connection.execute(self._statements.save_states, rows)
        self.documents.update(encoded)
        self.saved_at = now
        self.saved.update(
            (customer_id, (self._locked.get(customer_id, 0) + 1, state)) for customer_id, state in states.items()
        )

    async def update_memberships(self, entered: Sequence[Entered], left: Sequence[Left]) -> None:
        if entered:
            statement = self._insert(profile_segment_members)
            statement = statement.on_conflict_do_update(
                index_elements=["segment", "customer_id"], set_={"since": statement.excluded.since}
            )
            await self._connection.execute(
                statement,
                [{"segment": segment, "customer_id": customer, "since": since} for segment, customer, since in entered],
            )
        by_segment: dict[str, list[str]] = {}
        for segment, customer_id in left:
            by_segment.setdefault(segment, []).append(customer_id)
        for segment, customer_ids in sorted(by_segment.items()):
            await self._connection.execute(
                delete(profile_segment_members).where(
                    profile_segment_members.c.segment == segment,
                    profile_segment_members.c.customer_id.in_(customer_ids),
                )
            )

    # ------------------------------------------------------------------ lineage (see domain.lineage)

    async def advance_cursor(self, from_seq: int, to_seq: int) -> bool:
        self.reshaped = True
        result = await self._connection.execute(
            update(profile_lineage_cursor)
            .where(profile_lineage_cursor.c.source == LINEAGE_SOURCE, profile_lineage_cursor.c.seq == from_seq)
            .values(seq=to_seq)
        )
        return result.rowcount == 1

    async def roots(self, customer_ids: Sequence[str]) -> dict[str, str]:
        roots = await _roots(self._connection, customer_ids)
        self._roots.update(roots)
        return roots

    async def group(self, root: str) -> list[str]:
        return await _group(self._connection, root)

    async def add_alias(self, merged_id: str, survivor_id: str, merge_id: str, at: datetime) -> None:
        self.reshaped = True
        await self._connection.execute(
            profile_aliases.insert().values(
                merged_id=merged_id, survivor_id=survivor_id, merge_id=merge_id, merged_at=at
            )
        )

    async def remove_alias(self, merge_id: str) -> bool:
        self.reshaped = True
        result = await self._connection.execute(delete(profile_aliases).where(profile_aliases.c.merge_id == merge_id))
        return result.rowcount > 0

    async def events_of(self, customer_ids: Sequence[str]) -> list[AcceptedEvent]:
        rows = await self._connection.execute(
            select(
                profile_events.c.event_id,
                profile_events.c.customer_id,
                profile_events.c.kind,
                profile_events.c.occurred_at,
                profile_events.c.source,
                profile_events.c.payload,
            ).where(profile_events.c.customer_id.in_(customer_ids))
        )
        return [
            AcceptedEvent(
                row.event_id,
                row.customer_id,
                as_utc(row.occurred_at),
                row.source,
                payload_from_document(row.kind, row.payload),
            )
            for row in rows
        ]

    async def delete_profiles(self, customer_ids: Sequence[str]) -> None:
        self.reshaped = True
        for table in (profile_segment_members, profile_states):
            await self._connection.execute(delete(table).where(table.c.customer_id.in_(customer_ids)))

    async def erased(self, customer_ids: Sequence[str]) -> set[str]:
        return await _erased(self._connection, customer_ids)

    async def erase(self, customer_ids: Sequence[str], at: datetime) -> None:
        self.reshaped = True
        await self._connection.execute(
            self._insert(profile_erasures).on_conflict_do_nothing(index_elements=["customer_id"]),
            [{"customer_id": customer_id, "erased_at": at} for customer_id in customer_ids],
        )
        for table in (profile_events, profile_segment_members, profile_states):
            await self._connection.execute(delete(table).where(table.c.customer_id.in_(customer_ids)))
        await self._connection.execute(
            delete(profile_aliases).where(
                or_(profile_aliases.c.merged_id.in_(customer_ids), profile_aliases.c.survivor_id.in_(customer_ids))
            )
        )


def _among(column: Column) -> dict[str, Any]:
    """`column IN :ids` per dialect. On PostgreSQL `= ANY(:ids)` over one array parameter: one statement text whatever
    the number of ids, so the driver prepares it once and encodes the array in C (an expanding IN is rendered anew,
    and prepared anew for each new length, on every ingest transaction). SQLite has no arrays: an expanding IN."""
    return {
        "postgresql": column == any_(bindparam("ids", type_=ARRAY(String))),
        "sqlite": column.in_(bindparam("ids", expanding=True)),
    }


#: Built once (building and hashing a statement per call cost more CPU than running it), by dialect where they take a
#: list of ids: the erased among customers, the survivors of merged ones, a customer's state row.
ERASED = {d: select(profile_erasures.c.customer_id).where(w) for d, w in _among(profile_erasures.c.customer_id).items()}
SURVIVORS = {
    d: select(profile_aliases.c.merged_id, profile_aliases.c.survivor_id).where(w)
    for d, w in _among(profile_aliases.c.merged_id).items()
}
STATE_ROW = select(profile_states.c.state, profile_states.c.updated_at, profile_states.c.version).where(
    profile_states.c.customer_id == bindparam("customer_id")
)
MERGED_INTO = {d: select(profile_aliases.c.merged_id).where(w) for d, w in _among(profile_aliases.c.survivor_id).items()}
#: The newest events of customers (a survivor's group), newest first.
RECENT_EVENTS = {
    d: select(profile_events.c.event_id, profile_events.c.kind, profile_events.c.occurred_at, profile_events.c.summary)
    .where(w)
    .order_by(profile_events.c.occurred_at.desc(), profile_events.c.event_id.desc())
    .limit(bindparam("limit"))
    for d, w in _among(profile_events.c.customer_id).items()
}
#: The same for one customer: an equality the planner walks down the (customer, time) index.
RECENT_EVENTS_OF_ONE = (
    select(profile_events.c.event_id, profile_events.c.kind, profile_events.c.occurred_at, profile_events.c.summary)
    .where(profile_events.c.customer_id == bindparam("customer_id"))
    .order_by(profile_events.c.occurred_at.desc(), profile_events.c.event_id.desc())
    .limit(bindparam("limit"))
)


async def _group(connection: AsyncConnection, root: str) -> list[str]:
    """`root` and every customer merged into it, transitively (one query per level; one when none)."""
    members = [root]
    frontier = [root]
    while frontier:
        found = await connection.scalars(MERGED_INTO[connection.dialect.name], {"ids": frontier})
        frontier = [customer_id for customer_id in found if customer_id not in members]
        members.extend(frontier)
    return members


async def _erased(connection: AsyncConnection, customer_ids: Sequence[str]) -> set[str]:
    if not customer_ids:
        return set()
    return set(await connection.scalars(ERASED[connection.dialect.name], {"ids": list(customer_ids)}))


async def _roots(connection: AsyncConnection, customer_ids: Sequence[str]) -> dict[str, str]:
    """Merged customers among `customer_ids` -> the customer whose profile holds their events (the end of the
    alias chain). One query when none is merged, the usual case."""
    survivors: dict[str, str] = {}
    asked = list(customer_ids)
    while asked:
        found = dict((await connection.execute(SURVIVORS[connection.dialect.name], {"ids": asked})).all())
        survivors.update(found)
        asked = [survivor for survivor in set(found.values()) if survivor not in survivors]
    roots: dict[str, str] = {}
    for customer_id in customer_ids:
        root, seen = customer_id, {customer_id}
        while root in survivors and survivors[root] not in seen:
            root = survivors[root]
            seen.add(root)
        if root != customer_id:
            roots[customer_id] = root
    return roots


async def _state_row(connection: AsyncConnection, customer_id: str) -> tuple[str, Any] | None:
    """The customer's state row, or that of the customer it was merged into: (whose, row)."""
    row = (await connection.execute(STATE_ROW, {"customer_id": customer_id})).first()
    if row is not None:
        return customer_id, row
    owner = (await _roots(connection, [customer_id])).get(customer_id)
    if owner is None:
        # Each read sees the latest commit: an unmerge that committed between the two (alias gone, row back) would
        # otherwise make a customer with a profile look like one without.
        row = (await connection.execute(STATE_ROW, {"customer_id": customer_id})).first()
        return (customer_id, row) if row is not None else None
    row = (await connection.execute(STATE_ROW, {"customer_id": owner})).first()
    return (owner, row) if row is not None else None


class SqlProfileRepository:
    """Profile storage on SQLite or PostgreSQL through SQLAlchemy Core (one connection per call)."""

    def __init__(
        self, engine: AsyncEngine, cached_states: int = 10_000, cached_reads: int = 0, recent_activity: int = 20,
        share_saved_states: bool = False,
    ) -> None:
        self._engine = engine
        self._reader = reader(engine)  # reads need no transaction: no BEGIN/ROLLBACK round trips on PostgreSQL
        self._insert = insert_for(engine)
        self._ingest_statements = _IngestStatements(self._insert, engine.dialect.name == "postgresql")
        self._states = StateCache(cached_states)
        #: The customers every committed transaction announced (`WatchChanges`): this process's at commit, and on
        #: PostgreSQL every other replica's by NOTIFY, which also drops them from the read cache.
        self.changes = ChangeFeed()
        self.origin = uuid.uuid4().hex  # tells this process's announcements from other replicas'
        self.relay: PostgresRelay | None = None
        session: Callable[[], int | None] = lambda: 0  # noqa: E731 - SQLite: one process writes
        #: Replicas that share their saved states refill their read caches from one another's (PostgreSQL).
        self._share_saved = share_saved_states and engine.dialect.name == "postgresql"
        if engine.dialect.name == "postgresql":
            also = {SAVED_CHANNEL: self._saved_elsewhere} if self._share_saved else None
            relay = self.relay = PostgresRelay(
                engine, CHANGES_CHANNEL, self.changes, origin=self.origin, on_notify=self._changed_elsewhere, also=also
            )
            session = lambda: relay.session  # noqa: E731
        self.reads = ReadCache(cached_reads, recent_activity, session=session)

    def _changed_elsewhere(self, customer_ids: list[str]) -> None:
        self.reads.dropped_elsewhere(customer_ids, keep_aside=self._share_saved)  # another replica committed them

    def _saved_elsewhere(self, values: list[Any]) -> None:
        at, *saved = values  # as `_notify_saved` sends them, after the origin
        self.reads.saved_elsewhere(saved, datetime.fromisoformat(at))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlIngestTransaction]:
        async with translate_errors("ingest events"), self._engine.begin() as connection:
            tx = SqlIngestTransaction(connection, self._insert, self._states, self._ingest_statements)
            yield tx
            if self.relay is not None and tx.announced:
                await notify(connection, CHANGES_CHANNEL, sorted(tx.announced), origin=self.origin)
                if self._share_saved and not tx.reshaped and tx.saved_at is not None:
                    await self._notify_saved(connection, tx)
        # Committed (an exception skips this: what the batch touched is not reused).
        self._states.keep(tx.saved)
        if tx.reshaped:
            self.reads.invalidate()
        elif tx.saved_at is not None:
            versions = {customer_id: version for customer_id, (version, _) in tx.saved.items()}
            self.reads.committed(tx.documents, versions, tx.new_activity(), tx.saved_at)
        self.changes.publish(tx.announced)

    async def _notify_saved(self, connection: AsyncConnection, tx: SqlIngestTransaction) -> None:
        """Share the states this transaction saved, after its announcement, so that other replicas holding these
        customers refill their caches without reading them (each state in one payload, or not shared at all)."""
        events = tx.new_activity()
        head = [orjson.dumps(self.origin), orjson.dumps(tx.saved_at.isoformat())]
        items = (
            orjson.dumps([
                customer_id, tx.saved[customer_id][0], shared_document(document),
                [[a.event_id, a.kind, a.occurred_at.isoformat(), a.summary] for a in events.get(customer_id, ())],
            ])
            for customer_id, document in tx.documents.items()
        )
        await notify_items(connection, SAVED_CHANNEL, head, items)

    async def lineage_cursor(self) -> int:
        async with translate_errors("read lineage cursor"), self._reader.connect() as connection:
            seq = await connection.scalar(
                select(profile_lineage_cursor.c.seq).where(profile_lineage_cursor.c.source == LINEAGE_SOURCE)
            )
        return seq or 0

    async def erased(self, customer_ids: Sequence[str]) -> set[str]:
        async with translate_errors("read erasures"), self._reader.connect() as connection:
            return await _erased(connection, customer_ids)

    async def load_state(self, customer_id: str) -> ProfileState | None:
        cached = self.reads.get(customer_id, with_activity=False)
        if cached is not None:
            return cached.state
        found = await self._read_through(customer_id, 0)
        return found.state if found is not None else None

    async def load_profile(self, customer_id: str, recent_activity: int) -> StoredProfile | None:
        """The customer's profile (or that of the customer it was merged into), from the read cache if it holds it.
        `recent_activity` is 0 (none) or the service's setting, which the cache keeps."""
        cached = self.reads.get(customer_id, with_activity=recent_activity > 0)
        if cached is not None:
            activity = cached.activity if recent_activity else ()
            return StoredProfile(cached.state, cached.updated_at, activity or (), customer_id=customer_id)
        return await self._read_through(customer_id, recent_activity)

    async def _read_through(self, customer_id: str, recent_activity: int) -> StoredProfile | None:
        """Read the database and keep what was read, unless a write committed meanwhile (see ReadCache)."""
        token = self.reads.loading(customer_id)
        found = None
        try:
            # A passed deadline must not cost the pooled connection (see libs.cancellation).
            found = await uncancelled(self._load_profile(customer_id, recent_activity))
        finally:
            entry = None
            if found is not None and found.customer_id == customer_id:  # merged customers: read from the database
                activity = found.recent_activity if recent_activity else None
                entry = CachedProfile(found.state, found.updated_at, activity, version=found.version)
            self.reads.keep(customer_id, token, entry)
        return found

    async def _load_profile(self, customer_id: str, recent_activity: int) -> StoredProfile | None:
        async with translate_errors("read profile"), self._reader.connect() as connection:
            if recent_activity and self._ingest_statements.postgres:
                # The usual case in one round trip instead of three: the customer's own row and newest events.
                row = (
                    await connection.execute(_PG_PROFILE, {"customer_id": customer_id, "limit": recent_activity})
                ).first()
                if row is not None and not row.merged_into_it:
                    activity = tuple(
                        Activity(event_id, kind, as_utc(datetime.fromisoformat(at)), summary)
                        for event_id, kind, at, summary in row.recent
                    )
                    return StoredProfile(
                        ProfileState.from_document(row.state), as_utc(row.updated_at), activity, customer_id=customer_id,
                        version=row.version,
                    )
            found = await _state_row(connection, customer_id)
            if found is None:
                return None
            owner, row = found
            activity: list[Activity] = []
            if recent_activity:
                # A survivor's activity includes the events of the customers merged into it.
                members = await _group(connection, owner)
                events = await connection.execute(
                    *(
                        (RECENT_EVENTS_OF_ONE, {"customer_id": owner, "limit": recent_activity})
                        if len(members) == 1
                        else (RECENT_EVENTS[connection.dialect.name], {"ids": members, "limit": recent_activity})
                    )
                )
                activity = [Activity(event_id, kind, as_utc(at), summary) for event_id, kind, at, summary in events]
        # Activity read by statements of its own (a survivor's group) shares no snapshot with the row's version.
        return StoredProfile(
            ProfileState.from_document(row.state), as_utc(row.updated_at), tuple(activity), customer_id=owner,
            version=0 if recent_activity else row.version,
        )

    async def load_segments(self) -> list[SegmentDefinition]:
        async with translate_errors("read segments"), self._reader.connect() as connection:
            rows = await connection.execute(select(profile_segments).order_by(profile_segments.c.name))
            return [_definition(row) for row in rows]

    async def segments_version(self) -> str:
        # The definitions are few (tens): their names, versions and times are the version.
        async with translate_errors("read segments version"), self._reader.connect() as connection:
            rows = await connection.execute(
                select(profile_segments.c.name, profile_segments.c.version, profile_segments.c.updated_at).order_by(
                    profile_segments.c.name
                )
            )
            return ";".join(f"{name}:{version}:{as_utc(at).isoformat()}" for name, version, at in rows)

    async def put_segment(
        self, name: str, expression: str, description: str, expected_version: int, now: datetime
    ) -> SegmentDefinition:
        async with translate_errors("put segment"):
            try:
                return await self._put_segment(name, expression, description, expected_version, now)
            except IntegrityError as exc:  # another put of a new (or deleted) name took the same version first
                raise FailedPrecondition(f"segment {name!r} was changed concurrently; retry") from exc

    async def _put_segment(
        self, name: str, expression: str, description: str, expected_version: int, now: datetime
    ) -> SegmentDefinition:
        async with self._engine.begin() as connection:
            current = (await connection.execute(select(profile_segments).where(profile_segments.c.name == name))).first()
            version_now = current.version if current is not None else None
            if expected_version < 0 and current is not None:
                raise FailedPrecondition(f"segment {name!r} exists (version {version_now}); expected none")
            if expected_version > 0 and version_now != expected_version:
                raise FailedPrecondition(
                    f"segment {name!r} is at version {version_now or 0}, not the expected {expected_version}"
                )
            if current is not None:
                # A definition the release before this one put (it kept no history) joins the history first.
                await connection.execute(
                    self._insert(profile_segment_versions)
                    .values(**{column: getattr(current, column) for column in _DEFINITION_COLUMNS})
                    .on_conflict_do_nothing()
                )
            # After the newest version ever put, so a version names one definition even across a delete (and
            # past a version the release before this one reset).
            last = await connection.scalar(
                select(func.max(profile_segment_versions.c.version)).where(profile_segment_versions.c.name == name)
            )
            version = max(last or 0, version_now or 0) + 1
            values = {"expression": expression, "description": description, "updated_at": now}
            if current is None:
                await connection.execute(profile_segments.insert().values(name=name, version=version, **values))
            else:
                # The version in the WHERE makes a concurrent put of the same segment fail instead of being lost.
                result = await connection.execute(
                    update(profile_segments)
                    .where(profile_segments.c.name == name, profile_segments.c.version == version_now)
                    .values(version=version, **values)
                )
                if result.rowcount != 1:
                    raise FailedPrecondition(f"segment {name!r} was changed concurrently; retry")
            await connection.execute(profile_segment_versions.insert().values(name=name, version=version, **values))
            return SegmentDefinition(name, expression, description, version, now)

    async def segment_versions(self, name: str, below: int, limit: int) -> tuple[list[SegmentDefinition], int]:
        """Up to `limit` versions older than `below` (0: from the newest), newest first, and the current version."""
        # One statement, so one snapshot: the history and the current definition (which, put by the release
        # before this one, may be missing from the history), the latter flagged.
        history = profile_segment_versions.c
        older = (history.name == name) & (history.version < below) if below else history.name == name
        page = (  # a subquery: SQLite takes no ORDER BY / LIMIT on a member of a UNION
            select(*(history[column] for column in _DEFINITION_COLUMNS), literal(False).label("current"))
            .where(older)
            .order_by(history.version.desc())
            .limit(limit)
            .subquery()
        )
        statement = union_all(
            select(*page.c),
            select(*(profile_segments.c[column] for column in _DEFINITION_COLUMNS), literal(True).label("current"))
            .where(profile_segments.c.name == name),
        )
        async with translate_errors("read segment versions"), self._reader.connect() as connection:
            rows = list(await connection.execute(statement))
        current = next((row.version for row in rows if row.current), 0)
        versions = {row.version: _definition(row) for row in rows if not below or row.version < below}
        return [versions[version] for version in sorted(versions, reverse=True)[:limit]], current

    async def delete_segment(self, name: str) -> bool:
        async with translate_errors("delete segment"), self._engine.begin() as connection:
            result = await connection.execute(delete(profile_segments).where(profile_segments.c.name == name))
            return result.rowcount > 0

    async def state_documents(self, after: str, limit: int) -> list[tuple[str, dict[str, Any]]]:
        async with translate_errors("read profiles"), self._reader.connect() as connection:
            rows = await connection.execute(
                select(profile_states.c.customer_id, profile_states.c.state)
                .where(profile_states.c.customer_id > after)
                .order_by(profile_states.c.customer_id)
                .limit(limit)
            )
            return [(customer_id, state) for customer_id, state in rows]

    async def fold_versions(self, after: str, limit: int) -> list[tuple[str, int]]:
        # The version is read in the database: only ids and numbers come back, never the documents.
        version = func.coalesce(profile_states.c.state["fold_version"].as_integer(), 0)
        async with translate_errors("read fold versions"), self._reader.connect() as connection:
            rows = await connection.execute(
                select(profile_states.c.customer_id, version)
                .where(profile_states.c.customer_id > after)
                .order_by(profile_states.c.customer_id)
                .limit(limit)
            )
            return [(customer_id, found) for customer_id, found in rows]

    async def customer_ids(self, after: str, limit: int) -> list[str]:
        async with translate_errors("list customers"), self._reader.connect() as connection:
            rows = await connection.scalars(
                select(profile_states.c.customer_id)
                .where(profile_states.c.customer_id > after)
                .order_by(profile_states.c.customer_id)
                .limit(limit)
            )
            return list(rows)

    async def segment_exists(self, name: str) -> bool:
        async with translate_errors("read segments"), self._reader.connect() as connection:
            found = await connection.scalar(select(profile_segments.c.version).where(profile_segments.c.name == name))
        return found is not None

    async def segment_members(self, segment: str, after: str, limit: int) -> list[SegmentMember]:
        async with translate_errors("list segment members"), self._reader.connect() as connection:
            rows = await connection.execute(
                select(profile_segment_members.c.customer_id, profile_segment_members.c.since)
                .where(
                    profile_segment_members.c.segment == segment,
                    profile_segment_members.c.customer_id > after,
                )
                .order_by(profile_segment_members.c.customer_id)
                .limit(limit)
            )
            return [SegmentMember(customer_id, as_utc(since)) for customer_id, since in rows]


def _definition(row: Any) -> SegmentDefinition:
    return SegmentDefinition(row.name, row.expression, row.description, row.version, as_utc(row.updated_at))
