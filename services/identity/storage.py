"""SQLAlchemy Core tables of the identity service and the repository adapter (SQLite and PostgreSQL).

Identifiers are unique on (type, value): that constraint, with INSERT ... ON CONFLICT DO NOTHING, is what keeps two
concurrent Resolves of the same new identifiers from creating two customers. Consents are an append-only history;
the current decision per (purpose, channel) is computed when read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.db import as_utc, translate_errors
from services.identity.domain import (
    Consent,
    ConsentChannel,
    ConsentPurpose,
    Customer,
    Identifier,
    IdentifierKind,
    LinkOutcome,
)

metadata = MetaData()

customers = Table(
    "identity_customers",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
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
    Index("ix_identity_consents_current", "customer_id", "purpose", "channel", "recorded_at"),
)


def _to_db(moment: datetime) -> datetime:
    # SQLite stores the wall-clock digits and drops the offset, so everything is written in UTC.
    return moment.astimezone(UTC)




def _current_consents_query(customer_id: str) -> Select:
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
            position.label("position"),
        )
        .where(consents.c.customer_id == customer_id)
        .subquery()
    )
    return (
        select(customers.c.id, *(column for column in latest.c if column.name != "position"))
        .select_from(customers.outerjoin(latest, latest.c.position == 1))
        .where(customers.c.id == customer_id)
    )


class SqlIdentityRepository:
    """`IdentityRepository` on an AsyncEngine: one connection per call, Core statements only."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert
        # On PostgreSQL a plain read needs no transaction: skipping BEGIN/ROLLBACK saves two round trips per
        # Resolve. SQLite (pysqlite) never opens one for a SELECT anyway.
        self._reader = engine.execution_options(isolation_level="AUTOCOMMIT") if postgres else engine

    async def owners(self, wanted: Sequence[Identifier]) -> dict[Identifier, str]:
        if not wanted:
            return {}
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
            select(customers.c.created_at, identifiers.c.type, identifiers.c.value)
            .select_from(customers.outerjoin(identifiers, identifiers.c.customer_id == customers.c.id))
            .where(customers.c.id == customer_id)
        )
        async with translate_errors("customer lookup"), self._reader.connect() as connection:
            rows = (await connection.execute(query)).all()
        if not rows:
            return None
        linked = tuple(Identifier(IdentifierKind(row.type), row.value) for row in rows if row.type is not None)
        return Customer(customer_id, linked, as_utc(rows[0].created_at))

    async def record_consents(
        self, customer_id: str, decisions: Sequence[Consent], received_at: datetime
    ) -> list[Consent] | None:
        async with translate_errors("consent recording"), self.engine.connect() as connection:
            if await connection.scalar(select(customers.c.id).where(customers.c.id == customer_id)) is None:
                return None
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
                    }
                    for decision in decisions
                ],
            )
            current = await self._current_consents(connection, customer_id)
            await connection.commit()
        return current

    async def current_consents(self, customer_id: str) -> list[Consent] | None:
        async with translate_errors("consent lookup"), self._reader.connect() as connection:
            return await self._current_consents(connection, customer_id)

    @staticmethod
    async def _owners(connection: AsyncConnection, wanted: Sequence[Identifier]) -> dict[Identifier, str]:
        # One statement over the (type, value) primary key, however many identifiers the touchpoint sent. An OR
        # of equalities, not a row-value IN: SQLite scans the whole table for the latter.
        query = select(identifiers.c.type, identifiers.c.value, identifiers.c.customer_id).where(
            or_(*(and_(identifiers.c.type == i.kind.value, identifiers.c.value == i.value) for i in wanted))
        )
        rows = await connection.execute(query)
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
        rows = (await connection.execute(_current_consents_query(customer_id))).all()
        if not rows:
            return None
        return [
            Consent(
                ConsentPurpose(row.purpose),
                ConsentChannel(row.channel),
                row.granted,
                row.source,
                as_utc(row.recorded_at),
            )
            for row in rows
            if row.purpose is not None
        ]
