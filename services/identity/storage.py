"""SQLAlchemy Core tables of the identity service and the repository adapter (SQLite and PostgreSQL).

Identifiers are unique on (type, value): that constraint, with INSERT ... ON CONFLICT DO NOTHING, is what keeps two
concurrent Resolves of the same new identifiers from creating two customers. Consents are an append-only history;
the current decision per (purpose, channel) is computed when read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    Select,
    String,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.cancellation import uncancelled
from libs.db import as_utc, reader, translate_errors
from libs.errors import FailedPrecondition, NotFound
from services.identity.domain import (
    Consent,
    ConsentChannel,
    ConsentPurpose,
    Customer,
    ForgetOutcome,
    Identifier,
    IdentifierKind,
    LineageEntry,
    LineageKind,
    LinkOutcome,
    MergeOutcome,
    UnmergeOutcome,
)
from services.identity.matching.blocking import RULES
from services.identity.matching.traits import TRAIT_FIELDS, PersonTraits

metadata = MetaData()

customers = Table(
    "identity_customers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Set by Merge (cleared by Unmerge): the survivor now holding this customer's identifiers.
    Column("merged_into", String(32), nullable=True),
    # Set by Forget: the row stays (ids in other services' logs still name it) but nothing resolves to it.
    Column("forgotten_at", DateTime(timezone=True), nullable=True),
)

identifiers = Table(
    "identity_identifiers",
    metadata,
    # The primary key is the (type, value) uniqueness every lookup and every link relies on.
    Column("type", String(32), primary_key=True),
    Column("value", String(320), primary_key=True),
    Column("customer_id", String(32), ForeignKey("identity_customers.id"), nullable=False),
    Column("linked_at", DateTime(timezone=True), nullable=False),
    Index("ix_identity_identifiers_customer_id", "customer_id"),
    sqlite_with_rowid=False,  # SQLite finds the owner in the primary-key b-tree itself, one lookup fewer
)

consents = Table(
    "identity_consents",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("customer_id", String(32), ForeignKey("identity_customers.id"), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("source", String(128), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),  # when the customer decided
    Column("received_at", DateTime(timezone=True), nullable=False),  # when we stored it (audit)
    Column("text_version", String(128), nullable=False, server_default=""),
    Index("ix_identity_consents_current", "customer_id", "purpose", "channel", "recorded_at"),
)

#: The merge audit: who merged which customers, when and why, exactly what moved (for Unmerge), and the undo.
merges = Table(
    "identity_merges",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("survivor_id", String(32), nullable=False),
    Column("merged_id", String(32), nullable=False),
    Column("reason", String(512), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("merged_at", DateTime(timezone=True), nullable=False),
    # {"identifiers": [[type, value], ...], "trait_records": [id, ...]}; emptied by Forget (it is PII).
    Column("moved", JSON, nullable=False),
    Column("unmerged_at", DateTime(timezone=True), nullable=True),
    Column("unmerge_actor", String(128), nullable=True),
    Column("unmerge_reason", String(512), nullable=True),
    Index("ix_identity_merges_survivor_id", "survivor_id"),
    Index("ix_identity_merges_merged_id", "merged_id"),
)

#: The erasure audit: no PII, only the (pseudonymous) customer id, counts, who, when and why.
erasures = Table(
    "identity_erasures",
    metadata,
    Column("customer_id", String(32), primary_key=True),
    Column("erased_at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("reason", String(512), nullable=False),
    Column("identifiers", Integer, nullable=False),
    Column("trait_records", Integer, nullable=False),
    Column("consents", Integer, nullable=False),
)

#: The lineage journal: every merge, unmerge and erasure, appended in the transaction that made it, for services
#: that follow it (the profile, through ListLineage). No PII: ids, kind and time only.
lineage = Table(
    "identity_lineage",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("merge_id", String(32), nullable=True),
    Column("survivor_id", String(32), nullable=True),
    Column("merged_id", String(32), nullable=True),
    Column("customer_id", String(32), nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    sqlite_autoincrement=True,  # a seq is never handed out twice, even after the newest row is deleted
)

#: Person-trait records (normalised), several per customer; one indexed column per blocking rule so that a Resolve
#: by traits reads only the records sharing a key with it.
trait_records = Table(
    "identity_trait_records",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("customer_id", String(32), ForeignKey("identity_customers.id"), nullable=False),
    Column("given_name", String(128), nullable=False),
    Column("surname", String(128), nullable=False),
    Column("date_of_birth", String(8), nullable=False),
    Column("street_number", String(32), nullable=False),
    Column("address_line", String(128), nullable=False),
    Column("city", String(128), nullable=False),
    Column("postcode", String(32), nullable=False),
    Column("state", String(64), nullable=False),
    Column("phone", String(16), nullable=False),
    Column("bk_postcode_initials", String(64), nullable=True),
    Column("bk_dob", String(8), nullable=True),
    Column("bk_names", String(16), nullable=True),
    Column("bk_phone", String(16), nullable=True),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ix_identity_trait_records_customer_id", "customer_id"),
    Index("ix_identity_trait_records_bk_postcode_initials", "bk_postcode_initials"),
    Index("ix_identity_trait_records_bk_dob", "bk_dob"),
    Index("ix_identity_trait_records_bk_names", "bk_names"),
    Index("ix_identity_trait_records_bk_phone", "bk_phone"),
)

#: Estimated Fellegi–Sunter parameters, newest last (`nextbest identity estimate`).
match_models = Table(
    "identity_match_models",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("fitted_at", DateTime(timezone=True), nullable=False),
    Column("fitted_on", Integer, nullable=False),
    Column("params", JSON, nullable=False),
)

_TRAIT_COLUMNS = TRAIT_FIELDS
_KEY_COLUMNS = {rule: f"bk_{rule}" for rule in RULES}


def _trait_row(customer_id: str, traits: PersonTraits, keys: dict[str, str], at: datetime) -> dict:
    row = {name: getattr(traits, name) for name in _TRAIT_COLUMNS}
    # An empty key is NULL: never indexed as a shared value, never matched.
    row.update({column: keys.get(rule) or None for rule, column in _KEY_COLUMNS.items()})
    row.update(customer_id=customer_id, recorded_at=_to_db(at))
    return row


def _block_lock(rule: str, key: str) -> int:
    """A signed 64-bit advisory-lock id for a blocking key (namespaced: other lock users take small crc32 ids)."""
    digest = hashlib.blake2b(f"identity-block|{rule}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _to_db(moment: datetime) -> datetime:
    # SQLite stores the wall-clock digits and drops the offset, so everything is written in UTC.
    return moment.astimezone(UTC)


async def append_lineage(connection: AsyncConnection, kind: LineageKind, at: datetime, **ids: str) -> None:
    """Append a lineage entry as the last statement of the transaction that made the change.

    Followers keep only the last seq they applied, so seq order must be commit order: otherwise, on PostgreSQL, a
    transaction holding seq 10 could commit after one holding seq 11, a follower could read 11, move its cursor
    past 10 and never see it. The table lock (self-conflicting, but not with readers) is taken before the seq is
    drawn and held until commit, so appends are serialised: the next seq is drawn only after this one is visible.
    Merges and erasures are rare steward actions, so the queueing costs nothing; the lock comes last, after the
    customer row locks, so it never waits inside a cycle. A rolled-back append leaves a gap that no one waits for.
    SQLite serialises writers anyway.
    """
    if connection.dialect.name == "postgresql":
        await connection.execute(text("LOCK TABLE identity_lineage IN SHARE ROW EXCLUSIVE MODE"))
    await connection.execute(insert(lineage).values(kind=kind.value, recorded_at=_to_db(at), **ids))


def _consent(row: Row[Any]) -> Consent:
    return Consent(
        ConsentPurpose(row.purpose),
        ConsentChannel(row.channel),
        row.granted,
        row.source,
        as_utc(row.recorded_at),
        row.text_version or "",
    )


def _current_consents_query(customer_id: Any) -> Select:
    """The customer row outer-joined to its latest consent per (purpose, channel): no row means no customer."""
    position = func.row_number().over(
        partition_by=(consents.c.purpose, consents.c.channel),
        # Out-of-order arrivals lose to a later decision; on equal times the last one stored wins.
        order_by=(consents.c.recorded_at.desc(), consents.c.id.desc()),
    )
    latest = (
        select(
            consents.c.purpose,
            consents.c.channel,
            consents.c.granted,
            consents.c.source,
            consents.c.recorded_at,
            consents.c.text_version,
            position.label("position"),
        )
        .where(consents.c.customer_id == customer_id)
        .subquery()
    )
    return (
        select(customers.c.id, *(column for column in latest.c if column.name != "position"))
        .select_from(customers.outerjoin(latest, latest.c.position == 1))
        .where(customers.c.id == customer_id, customers.c.forgotten_at.is_(None))
    )


#: Built once: building and hashing this statement per call cost ≈ 0.5 ms of CPU, more than running it.
CURRENT_CONSENTS = _current_consents_query(bindparam("customer_id"))


@lru_cache(maxsize=32)
def _owners_query(count: int) -> Select:
    """The owners of `count` identifiers (params t0, v0, t1, v1, ...), built once per count. One statement over the
    (type, value) primary key: an OR of equalities, not a row-value IN (SQLite scans the whole table for that)."""
    return select(identifiers.c.type, identifiers.c.value, identifiers.c.customer_id).where(
        or_(
            *(
                and_(identifiers.c.type == bindparam(f"t{i}"), identifiers.c.value == bindparam(f"v{i}"))
                for i in range(count)
            )
        )
    )


class SqlIdentityRepository:
    """`IdentityRepository` on an AsyncEngine: one connection per call, Core statements only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert
        self._reader = reader(engine)  # no BEGIN/ROLLBACK round trips around single-statement reads

    async def owners(self, wanted: Sequence[Identifier]) -> dict[Identifier, str]:
        if not wanted:
            return {}
        return await uncancelled(self._read_owners(wanted))  # a passed deadline must not cost the connection

    async def _read_owners(self, wanted: Sequence[Identifier]) -> dict[Identifier, str]:
        async with translate_errors("identifier lookup"), self._reader.connect() as connection:
            return await self._owners(connection, wanted)

    async def create_customer(self, customer_id: str, linked: Sequence[Identifier], at: datetime) -> bool:
        async with translate_errors("customer creation"), self.engine.connect() as connection:
            await connection.execute(insert(customers).values(id=customer_id, created_at=_to_db(at)))
            inserted = await self._insert_unowned(connection, customer_id, linked, at)
            if len(inserted) < len(linked):
                return False  # leaving the block without commit rolls the customer back too
            await connection.commit()
            return True

    async def create_customer_with_traits(
        self,
        customer_id: str,
        linked: Sequence[Identifier],
        traits: PersonTraits,
        keys: dict[str, str],
        at: datetime,
        *,
        unless: Callable[[list[tuple[str, PersonTraits]]], bool] | None = None,
        limit: int = 200,
    ) -> bool:
        async with translate_errors("customer creation"), self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await self._lock_blocks(connection, keys)
            # On SQLite this first write takes the database's write lock, which serialises creations just as well.
            await connection.execute(insert(customers).values(id=customer_id, created_at=_to_db(at)))
            # Read under the lock: a concurrent creation of this person has committed by now, and is seen.
            if unless is not None and unless(await self._candidates(connection, keys, limit)):
                return False  # rolled back with the customer
            if linked:
                inserted = await self._insert_unowned(connection, customer_id, linked, at)
                if len(inserted) < len(linked):
                    return False  # rolled back with the customer
            await connection.execute(insert(trait_records).values(_trait_row(customer_id, traits, keys, at)))
            await connection.commit()
            return True

    async def add_traits(self, customer_id: str, traits: PersonTraits, keys: dict[str, str], at: datetime) -> bool:
        row = _trait_row(customer_id, traits, keys, at)
        same = [trait_records.c[name] == getattr(traits, name) for name in _TRAIT_COLUMNS]
        # INSERT ... SELECT ... WHERE NOT EXISTS: one statement instead of a read then a write (a round trip fewer
        # on Resolve's path, and atomic under SQLite's write lock). Typed casts, so PostgreSQL knows each type.
        source = select(*(cast(literal(value), trait_records.c[name].type) for name, value in row.items())).where(
            ~exists().where(trait_records.c.customer_id == customer_id, *same)
        )
        async with translate_errors("trait recording"), self.engine.connect() as connection:
            stored = (await connection.execute(insert(trait_records).from_select(list(row), source))).rowcount == 1
            await connection.commit()
        return stored

    async def trait_candidates(self, keys: dict[str, str], limit: int) -> list[tuple[str, PersonTraits]]:
        if not any(keys.values()):
            return []
        async with translate_errors("trait lookup"), self._reader.connect() as connection:
            return await self._candidates(connection, keys, limit)

    @staticmethod
    async def _candidates(
        connection: AsyncConnection, keys: dict[str, str], limit: int
    ) -> list[tuple[str, PersonTraits]]:
        conditions = [trait_records.c[_KEY_COLUMNS[rule]] == key for rule, key in keys.items() if key]
        if not conditions:
            return []
        # One OR of indexed equalities: each is an index lookup (bitmap OR on PostgreSQL, MULTI-INDEX OR on SQLite).
        query = (
            select(trait_records.c.customer_id, *(trait_records.c[name] for name in _TRAIT_COLUMNS))
            .where(or_(*conditions))
            .limit(limit)
        )
        rows = (await connection.execute(query)).all()
        return [(row.customer_id, PersonTraits(*row[1:])) for row in rows]

    @staticmethod
    async def _lock_blocks(connection: AsyncConnection, keys: dict[str, str]) -> None:
        """PostgreSQL: transaction-scoped advisory locks on every blocking key of a new trait record, so creations
        that could find each other's records (they share a key) run one after the other. Every key, not only the
        strongest: a noisy copy of the person may share just one. Taken in sorted order (no deadlock between two
        creations), in one statement."""
        locks = sorted({_block_lock(rule, key) for rule, key in keys.items() if key})
        if locks:
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k"), {"keys": locks}
            )

    async def all_trait_records(self) -> list[tuple[str, PersonTraits]]:
        """Every stored trait record (model estimation)."""
        query = select(trait_records.c.customer_id, *(trait_records.c[name] for name in _TRAIT_COLUMNS)).order_by(
            trait_records.c.id
        )
        async with translate_errors("trait export"), self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [(row.customer_id, PersonTraits(*row[1:])) for row in rows]

    async def latest_model(self) -> dict | None:
        query = select(match_models.c.params).order_by(match_models.c.id.desc()).limit(1)
        async with translate_errors("match model lookup"), self._reader.connect() as connection:
            return await connection.scalar(query)

    async def save_model(self, params: dict, fitted_on: int, at: datetime) -> None:
        async with translate_errors("match model saving"), self.engine.begin() as connection:
            await connection.execute(
                insert(match_models).values(fitted_at=_to_db(at), fitted_on=fitted_on, params=params)
            )

    async def link(self, customer_id: str, wanted: Sequence[Identifier], at: datetime) -> LinkOutcome:
        async with translate_errors("identifier linking"), self.engine.connect() as connection:
            inserted = await self._insert_unowned(connection, customer_id, wanted, at)
            rest = [identifier for identifier in wanted if identifier not in inserted]
            # Read inside the same transaction, after ON CONFLICT waited for the rows' writers to finish.
            taken = await self._owners(connection, rest) if rest else {}
            await connection.commit()
        return LinkOutcome(tuple(identifier for identifier in wanted if identifier in inserted), taken)

    async def customer(self, customer_id: str) -> Customer | None:
        query = (
            select(customers.c.created_at, customers.c.merged_into, identifiers.c.type, identifiers.c.value)
            .select_from(customers.outerjoin(identifiers, identifiers.c.customer_id == customers.c.id))
            .where(customers.c.id == customer_id, customers.c.forgotten_at.is_(None))
        )
        async with translate_errors("customer lookup"), self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        if not rows:
            return None
        linked = tuple(Identifier(IdentifierKind(row.type), row.value) for row in rows if row.type is not None)
        return Customer(customer_id, linked, as_utc(rows[0].created_at), rows[0].merged_into)

    async def record_consents(
        self, customer_id: str, decisions: Sequence[Consent], received_at: datetime
    ) -> list[Consent] | None:
        async with translate_errors("consent recording"), self.engine.connect() as connection:
            state = (
                await connection.execute(
                    select(customers.c.merged_into).where(
                        customers.c.id == customer_id, customers.c.forgotten_at.is_(None)
                    )
                )
            ).first()
            if state is None:
                return None
            if state.merged_into is not None:
                raise FailedPrecondition(f"customer {customer_id} was merged into {state.merged_into}; use that id")
            await connection.execute(
                insert(consents),
                [
                    {
                        "customer_id": customer_id,
                        "purpose": decision.purpose.value,
                        "channel": decision.channel.value,
                        "granted": decision.granted,
                        "source": decision.source,
                        "recorded_at": _to_db(decision.recorded_at),
                        "received_at": _to_db(received_at),
                        "text_version": decision.text_version,
                    }
                    for decision in decisions
                ],
            )
            current = await self._current_consents(connection, customer_id)
            await connection.commit()
        return current

    async def current_consents(self, customer_id: str) -> list[Consent] | None:
        return await uncancelled(self._read_current_consents(customer_id))

    async def _read_current_consents(self, customer_id: str) -> list[Consent] | None:
        async with translate_errors("consent lookup"), self._reader.connect() as connection:
            return await self._current_consents(connection, customer_id)

    async def consent_history(self, customer_id: str) -> list[Consent]:
        query = (
            select(consents)
            .where(consents.c.customer_id == customer_id)
            .order_by(consents.c.recorded_at, consents.c.id)
        )
        async with translate_errors("consent history"), self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_consent(row) for row in rows]

    async def merge(
        self, merge_id: str, survivor: str, merged: str, reason: str, actor: str, at: datetime
    ) -> MergeOutcome:
        async with translate_errors("merge"), self.engine.connect() as connection:
            for customer_id in sorted((survivor, merged)):  # lock order: two crossing merges cannot deadlock
                await self._live_customer(connection, customer_id, lock=True)
            moved_identifiers = (
                await connection.execute(
                    select(identifiers.c.type, identifiers.c.value)
                    .where(identifiers.c.customer_id == merged)
                    .order_by(identifiers.c.type, identifiers.c.value)
                )
            ).all()
            moved_traits = (
                await connection.scalars(
                    select(trait_records.c.id).where(trait_records.c.customer_id == merged).order_by(trait_records.c.id)
                )
            ).all()
            await connection.execute(
                update(identifiers).where(identifiers.c.customer_id == merged).values(customer_id=survivor)
            )
            await connection.execute(
                update(trait_records).where(trait_records.c.customer_id == merged).values(customer_id=survivor)
            )
            await connection.execute(update(customers).where(customers.c.id == merged).values(merged_into=survivor))
            await connection.execute(
                insert(merges).values(
                    id=merge_id,
                    survivor_id=survivor,
                    merged_id=merged,
                    reason=reason,
                    actor=actor,
                    merged_at=_to_db(at),
                    moved={
                        "identifiers": [[row.type, row.value] for row in moved_identifiers],
                        "trait_records": list(moved_traits),
                    },
                )
            )
            await append_lineage(
                connection, LineageKind.MERGE, at, merge_id=merge_id, survivor_id=survivor, merged_id=merged
            )
            await connection.commit()
        return MergeOutcome(merge_id, len(moved_identifiers), len(moved_traits))

    async def unmerge(self, merge_id: str, reason: str, actor: str, at: datetime) -> UnmergeOutcome:
        async with translate_errors("unmerge"), self.engine.connect() as connection:
            merge = (await connection.execute(select(merges).where(merges.c.id == merge_id))).first()
            if merge is None:
                raise NotFound(f"merge {merge_id} not found")
            if merge.unmerged_at is not None:
                raise FailedPrecondition(f"merge {merge_id} was already undone")
            for customer_id in sorted((merge.survivor_id, merge.merged_id)):
                await self._customer_row(connection, customer_id, lock=True)
            survivor = await self._customer_row(connection, merge.survivor_id, lock=False)
            if survivor.forgotten_at is not None:
                raise FailedPrecondition(f"customer {merge.survivor_id} was erased; the merge cannot be undone")
            if survivor.merged_into is not None:
                later = await connection.scalar(
                    select(merges.c.id).where(merges.c.merged_id == merge.survivor_id, merges.c.unmerged_at.is_(None))
                )
                raise FailedPrecondition(
                    f"customer {merge.survivor_id} was merged again since; undo merge {later} first"
                )
            moved = merge.moved
            wanted = [Identifier(IdentifierKind(kind), value) for kind, value in moved["identifiers"]]
            owners = await self._owners(connection, wanted) if wanted else {}
            if any(owners.get(identifier) != merge.survivor_id for identifier in wanted):
                raise FailedPrecondition(f"identifiers moved by merge {merge_id} have changed owner since")
            for chunk in _chunks(wanted, 200):
                keys = (and_(identifiers.c.type == i.kind.value, identifiers.c.value == i.value) for i in chunk)
                await connection.execute(update(identifiers).where(or_(*keys)).values(customer_id=merge.merged_id))
            restored_traits = 0
            for chunk in _chunks(moved["trait_records"], 500):
                result = await connection.execute(
                    update(trait_records)
                    .where(trait_records.c.id.in_(chunk), trait_records.c.customer_id == merge.survivor_id)
                    .values(customer_id=merge.merged_id)
                )
                restored_traits += result.rowcount
            await connection.execute(
                update(customers).where(customers.c.id == merge.merged_id).values(merged_into=None)
            )
            await connection.execute(
                update(merges)
                .where(merges.c.id == merge_id)
                .values(unmerged_at=_to_db(at), unmerge_actor=actor, unmerge_reason=reason)
            )
            await append_lineage(
                connection,
                LineageKind.UNMERGE,
                at,
                merge_id=merge_id,
                survivor_id=merge.survivor_id,
                merged_id=merge.merged_id,
            )
            await connection.commit()
        return UnmergeOutcome(merge.merged_id, merge.survivor_id, len(wanted), restored_traits)

    async def forget(self, customer_id: str, reason: str, actor: str, at: datetime) -> ForgetOutcome:
        async with translate_errors("erasure"), self.engine.connect() as connection:
            done = (await connection.execute(select(erasures).where(erasures.c.customer_id == customer_id))).first()
            if done is not None:
                return ForgetOutcome(False, done.identifiers, done.trait_records, done.consents, as_utc(done.erased_at))
            row = await self._customer_row(connection, customer_id, lock=True)
            if row.merged_into is not None:
                raise FailedPrecondition(
                    f"customer {customer_id} was merged into {row.merged_into}: erase that customer, or unmerge first"
                )
            counts = []
            for table in (identifiers, trait_records, consents):
                result = await connection.execute(delete(table).where(table.c.customer_id == customer_id))
                counts.append(result.rowcount)
            # The merge audit keeps who/when/why, but not the identifiers it moved: they are the erased PII.
            await connection.execute(
                update(merges)
                .where(or_(merges.c.survivor_id == customer_id, merges.c.merged_id == customer_id))
                .values(moved={"identifiers": [], "trait_records": [], "erased": True})
            )
            await connection.execute(
                update(customers).where(customers.c.id == customer_id).values(forgotten_at=_to_db(at))
            )
            await connection.execute(
                insert(erasures).values(
                    customer_id=customer_id,
                    erased_at=_to_db(at),
                    actor=actor,
                    reason=reason,
                    identifiers=counts[0],
                    trait_records=counts[1],
                    consents=counts[2],
                )
            )
            await append_lineage(connection, LineageKind.FORGET, at, customer_id=customer_id)
            await connection.commit()
        return ForgetOutcome(True, counts[0], counts[1], counts[2], at)

    async def lineage(self, after_seq: int, limit: int) -> list[LineageEntry]:
        query = select(lineage).where(lineage.c.seq > after_seq).order_by(lineage.c.seq).limit(limit)
        async with translate_errors("lineage listing"), self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            LineageEntry(
                seq=row.seq,
                kind=LineageKind(row.kind),
                recorded_at=as_utc(row.recorded_at),
                merge_id=row.merge_id or "",
                survivor_id=row.survivor_id or "",
                merged_id=row.merged_id or "",
                customer_id=row.customer_id or "",
            )
            for row in rows
        ]

    @staticmethod
    async def _customer_row(connection: AsyncConnection, customer_id: str, *, lock: bool):
        query = select(customers).where(customers.c.id == customer_id)
        if lock:
            query = query.with_for_update()  # PostgreSQL row lock; SQLite serialises writers anyway
        row = (await connection.execute(query)).first()
        if row is None:
            raise NotFound(f"customer {customer_id} not found")
        return row

    async def _live_customer(self, connection: AsyncConnection, customer_id: str, *, lock: bool) -> None:
        row = await self._customer_row(connection, customer_id, lock=lock)
        if row.forgotten_at is not None:
            raise NotFound(f"customer {customer_id} not found")
        if row.merged_into is not None:
            raise FailedPrecondition(f"customer {customer_id} was already merged into {row.merged_into}")

    @staticmethod
    async def _owners(connection: AsyncConnection, wanted: Sequence[Identifier]) -> dict[Identifier, str]:
        params = {}
        for index, identifier in enumerate(wanted):
            params[f"t{index}"], params[f"v{index}"] = identifier.kind.value, identifier.value
        rows = await connection.execute(_owners_query(len(wanted)), params)
        return {Identifier(IdentifierKind(row.type), row.value): row.customer_id for row in rows}

    async def _insert_unowned(
        self, connection: AsyncConnection, customer_id: str, wanted: Sequence[Identifier], at: datetime
    ) -> set[Identifier]:
        """Links every identifier nobody owns yet to the customer; returns the ones this statement linked."""
        # Rows go in key order so that two transactions inserting the same keys lock them in the same order: on
        # PostgreSQL, [e-mail, phone] racing [phone, e-mail] would otherwise deadlock.
        ordered = sorted(wanted, key=lambda i: (i.kind.value, i.value))
        statement = (
            self._insert(identifiers)
            .values(
                [
                    {"type": i.kind.value, "value": i.value, "customer_id": customer_id, "linked_at": _to_db(at)}
                    for i in ordered
                ]
            )
            .on_conflict_do_nothing(index_elements=[identifiers.c.type, identifiers.c.value])
            .returning(identifiers.c.type, identifiers.c.value)
        )
        rows = await connection.execute(statement)
        return {Identifier(IdentifierKind(row.type), row.value) for row in rows}

    @staticmethod
    async def _current_consents(connection: AsyncConnection, customer_id: str) -> list[Consent] | None:
        rows = (await connection.execute(CURRENT_CONSENTS, {"customer_id": customer_id})).all()
        if not rows:
            return None
        return [_consent(row) for row in rows if row.purpose is not None]
