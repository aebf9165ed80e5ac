"""Decision log and outcome outbox: SQLAlchemy Core tables and the repository (no ORM on the hot path).

Every decision is one INSERT; an outcome is one INSERT … ON CONFLICT DO NOTHING keyed by its outcome id, which
makes RecordOutcome idempotent even for concurrent duplicates. Outcomes with `forwarded_at` NULL are the outbox.
The lineage tables (aliases of merged customers, the journal cursor) serve identity's erasures: see
`domain/lineage.py` and `SqlLineageTransaction`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Interval,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    case,
    cast,
    column,
    delete,
    distinct,
    func,
    literal,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.cancellation import uncancelled
from libs.db import as_utc, insert_for, one_statement, reader, translate_errors
from services.decision.domain.contact import DAY, RESPONSES, WEEK, Contacts
from services.decision.domain.experiment import CONTROL, TREATMENT
from services.decision.domain.lineage import LoggedDecision, LoggedOutcome
from services.decision.domain.model import PendingOutcome
from services.decision.domain.report import ACCEPTED_OUTCOMES, LATENCY_BOUNDS_MS, ArmTotals, GroupTotals, ReportQuery

metadata = MetaData()

decisions = Table(
    "decision_decisions",
    metadata,
    Column("decision_id", String(32), primary_key=True),
    Column("customer_id", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request", JSON, nullable=False),
    Column("offers", JSON, nullable=False),
    Column("degraded", Boolean, nullable=False),
    Column("degraded_reasons", JSON, nullable=False),
    Column("catalogue_version", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("trace", JSON, nullable=False),
    #: The customer's profile segments at decision time (migration 0003; NULL for decisions logged before it).
    Column("segments", JSON, nullable=True),
    #: Milliseconds from the request's arrival to the decision being ready to log (migration 0004; NULL before it).
    Column("latency_ms", Float, nullable=True),
    #: The ids of `offers`, for the contact-policy counts (migration 0006; NULL for decisions logged before it).
    Column("offer_ids", JSON, nullable=True),
)
Index("ix_decision_decisions_customer_created", decisions.c.customer_id, decisions.c.created_at)
Index("ix_decision_decisions_created", decisions.c.created_at)

outcomes = Table(
    "decision_outcomes",
    metadata,
    Column("outcome_id", String(128), primary_key=True),
    Column("decision_id", String(32), ForeignKey("decision_decisions.decision_id"), nullable=False),
    Column("offer_id", String(128), nullable=False),
    Column("type", String(16), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("revenue", Float, nullable=False),
    Column("customer_id", String(128), nullable=False),
    Column("forwarded_at", DateTime(timezone=True), nullable=True),
    #: Why an outcome was settled without reaching a profile (anonymous, rejected as malformed).
    Column("forward_note", Text, nullable=True),
)
Index("ix_decision_outcomes_decision", outcomes.c.decision_id)
Index(
    "ix_decision_outcomes_pending",
    outcomes.c.recorded_at,
    sqlite_where=outcomes.c.forwarded_at.is_(None),
    postgresql_where=outcomes.c.forwarded_at.is_(None),
)




#: Budget caps: accepted outcomes and their revenue per offer, incremented only while under the cap (migration 0002).
budgets = Table(
    "decision_budgets",
    metadata,
    Column("offer_id", String(128), primary_key=True),
    Column("accepts", Integer, nullable=False),
    Column("spend", Float, nullable=False),
)

#: Identity merges as the decision follows them (migration 0005): forgetting the survivor reaches these customers.
aliases = Table(
    "decision_aliases",
    metadata,
    Column("merged_id", String(128), primary_key=True),  # identity merges a customer into one survivor at a time
    Column("survivor_id", String(128), nullable=False),
    Column("merge_id", String(64), nullable=False, unique=True),
    Column("merged_at", DateTime(timezone=True), nullable=False),
    Index("ix_decision_aliases_survivor_id", "survivor_id"),
)

#: The seq of the last entry of identity's lineage journal applied here (one row, moved with each entry; 0005).
lineage_cursor = Table(
    "decision_lineage_cursor",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)
LINEAGE_SOURCE = "identity"
#: Ids per IN list of the erasure's statements (well under the drivers' bind-parameter limits).
IN_CHUNK = 500


#: What a customer's decisions in the look-back window say about some offers (`domain.contact.Contacts`), counted in
#: the database: one row per offer however long the history, on the (customer_id, created_at) index, each shown offer
#: with its outcomes found on their decision_id index. The ids of the offers a decision returned are expanded from
#: its narrow JSON column (from its `offers` for a decision logged before migration 0006), so the statement has a
#: PostgreSQL and a SQLite spelling of that one step.
_CONTACTS = """
SELECT s.offer_id,
       count(*) FILTER (WHERE s.channel = :channel AND s.created_at > :day_start) AS today,
       count(*) FILTER (WHERE s.channel = :channel AND s.created_at > :week_start) AS week,
       count(*) FILTER (WHERE s.created_at > :week_start AND s.created_at <= :ignored_before AND NOT s.responded)
           AS ignored,
       max(s.declined_at) AS declined_at
FROM (
    SELECT d.channel, d.created_at, x.value AS offer_id,
           EXISTS (SELECT 1 FROM decision_outcomes AS o
                   WHERE o.decision_id = d.decision_id AND o.offer_id = x.value AND o.type IN :responses)
               AS responded,
           (SELECT max(o.occurred_at) FROM decision_outcomes AS o
            WHERE o.decision_id = d.decision_id AND o.offer_id = x.value AND o.type = 'decline') AS declined_at
    FROM decision_decisions AS d, {shown} AS x
    WHERE d.customer_id = :customer_id AND d.created_at >= :since AND x.value IN :offer_ids
) AS s
GROUP BY s.offer_id
"""
#: The ids a decision returned, one row each (`x.value`). A set-returning function in FROM may read the rows before it
#: (implicitly LATERAL) in both databases.
_SHOWN_OFFERS = {
    "postgresql": "json_array_elements_text(coalesce(d.offer_ids, "
    "(SELECT json_agg(o ->> 'offer_id') FROM json_array_elements(d.offers) AS o)))",
    "sqlite": "json_each(coalesce(d.offer_ids, "
    "(SELECT json_group_array(json_extract(o.value, '$.offer_id')) FROM json_each(d.offers) AS o)))",
}


def _contacts_statement(dialect: str):
    when = DateTime(timezone=True)
    return (
        text(_CONTACTS.format(shown=_SHOWN_OFFERS[dialect]))
        .bindparams(
            *(bindparam(name, type_=when) for name in ("day_start", "week_start", "ignored_before", "since")),
            bindparam("responses", expanding=True),
            bindparam("offer_ids", expanding=True),
        )
        .columns(offer_id=String, today=Integer, week=Integer, ignored=Integer, declined_at=when)
    )


DECISION_FOR_OUTCOME = select(decisions.c.customer_id, decisions.c.channel, decisions.c.offers).where(
    decisions.c.decision_id == bindparam("decision_id")
)


class _OverBudget(Exception):
    """Rolls the outcome's transaction back: accepting it would exceed the offer's budget."""


class SqlLineageTransaction:
    """The storage steps of applying one lineage entry (`domain.lineage`), on one open transaction. Its first
    statement moves the cursor row, which serialises followers (and takes SQLite's write lock at once)."""

    def __init__(self, connection: AsyncConnection, insert: Any) -> None:
        self._connection = connection
        self._insert = insert

    async def advance_cursor(self, from_seq: int, to_seq: int) -> bool:
        result = await self._connection.execute(
            update(lineage_cursor)
            .where(lineage_cursor.c.source == LINEAGE_SOURCE, lineage_cursor.c.seq == from_seq)
            .values(seq=to_seq)
        )
        return result.rowcount == 1

    async def add_alias(self, merged_id: str, survivor_id: str, merge_id: str) -> None:
        values = {"survivor_id": survivor_id, "merge_id": merge_id, "merged_at": datetime.now(UTC)}
        await self._connection.execute(  # a customer unmerged and merged again replaces its old alias
            self._insert(aliases)
            .values(merged_id=merged_id, **values)
            .on_conflict_do_update(index_elements=[aliases.c.merged_id], set_=values)
        )

    async def remove_alias(self, merge_id: str) -> bool:
        result = await self._connection.execute(delete(aliases).where(aliases.c.merge_id == merge_id))
        return result.rowcount > 0

    async def group(self, root: str) -> list[str]:
        members, frontier = [root], [root]
        while frontier:  # one query per level of merges; one when none
            found = await self._connection.scalars(
                select(aliases.c.merged_id).where(aliases.c.survivor_id.in_(frontier))
            )
            frontier = [customer_id for customer_id in found if customer_id not in members]
            members.extend(frontier)
        return members

    async def logged(
        self, customer_ids: Sequence[str], decision_ids: Sequence[str]
    ) -> tuple[list[LoggedDecision], list[LoggedOutcome]]:
        found: list[LoggedDecision] = []
        for chunk in _chunks(customer_ids):  # on the (customer_id, created_at) index
            rows = await self._connection.execute(
                select(decisions.c.decision_id, decisions.c.customer_id, decisions.c.request).where(
                    decisions.c.customer_id.in_(chunk)
                )
            )
            found.extend(LoggedDecision(r.decision_id, r.customer_id, r.request) for r in rows)
        erased = set(customer_ids)
        logged_outcomes: list[LoggedOutcome] = []
        for chunk in _chunks(sorted({*(d.decision_id for d in found), *decision_ids})):  # on the decision_id index
            rows = await self._connection.execute(
                select(outcomes.c.outcome_id, outcomes.c.customer_id).where(outcomes.c.decision_id.in_(chunk))
            )
            logged_outcomes.extend(LoggedOutcome(r.outcome_id, r.customer_id) for r in rows if r.customer_id in erased)
        return found, logged_outcomes

    async def rewrite(self, rewritten: Sequence[LoggedDecision], renamed: Sequence[LoggedOutcome]) -> None:
        if rewritten:
            await self._connection.execute(
                REWRITE_DECISION,
                [
                    {"b_id": d.decision_id, "b_customer_id": d.customer_id, "b_request": dict(d.request)}
                    for d in rewritten
                ],
            )
        if renamed:
            await self._connection.execute(
                RENAME_OUTCOME, [{"b_id": o.outcome_id, "b_customer_id": o.customer_id} for o in renamed]
            )

    async def drop_aliases(self, customer_ids: Sequence[str]) -> None:
        for chunk in _chunks(customer_ids):
            await self._connection.execute(
                delete(aliases).where(or_(aliases.c.merged_id.in_(chunk), aliases.c.survivor_id.in_(chunk)))
            )


#: Executed once per batch of rows (executemany): an erasure writes each affected row back under its pseudonym.
REWRITE_DECISION = (
    update(decisions)
    .where(decisions.c.decision_id == bindparam("b_id"))
    .values(customer_id=bindparam("b_customer_id"), request=bindparam("b_request", type_=decisions.c.request.type))
)
RENAME_OUTCOME = (
    update(outcomes).where(outcomes.c.outcome_id == bindparam("b_id")).values(customer_id=bindparam("b_customer_id"))
)


def _chunks(ids: Sequence[str]) -> list[list[str]]:
    ids = list(ids)
    return [ids[start : start + IN_CHUNK] for start in range(0, len(ids), IN_CHUNK)]


class DecisionRepository:
    """The decision log and the outcome outbox; a connection per call, never shared between tasks."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._reader = reader(engine)  # also the autocommit engine of one-statement writes
        self._insert = insert_for(engine)
        self._insert_outcome = (
            self._insert(outcomes)
            .on_conflict_do_nothing(index_elements=[outcomes.c.outcome_id])
            .returning(outcomes.c.outcome_id)
        )
        self._contacts = _contacts_statement(engine.dialect.name)
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def save_decision(self, row: Mapping[str, Any]) -> None:
        """Durable when this returns. Group commit: a lone decision is written at once; decisions that arrive
        while a write is in flight share the next INSERT and commit, so the log costs one transaction per
        batch instead of one per decision under load, and adds no waiting when idle. The ids of its offers are
        stored beside them (`offer_ids`, for the contact counts)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(({**row, "offer_ids": [offer["offer_id"] for offer in row["offers"]]}, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        await asyncio.shield(done)  # a caller that gives up does not cancel the others' write

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                async with translate_errors("decision log"), one_statement(self._reader) as conn:
                    await conn.execute(decisions.insert(), [row for row, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, who raises it
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)

    async def decision_for_outcome(self, decision_id: str) -> tuple[str, str, list[str]] | None:
        """(customer id, channel, ids of the offers the decision returned), or None when there is no such decision."""
        async with translate_errors("decision log"), self._reader.connect() as conn:
            found = (await conn.execute(DECISION_FOR_OUTCOME, {"decision_id": decision_id})).first()
        if found is None:
            return None
        return found.customer_id, found.channel, [offer["offer_id"] for offer in found.offers]

    async def insert_outcome(self, row: Mapping[str, Any]) -> bool:
        """Insert unless the outcome id is already recorded; True when this call inserted it."""
        async with translate_errors("outcome"), one_statement(self._reader) as conn:
            return (await conn.execute(self._insert_outcome, dict(row))).first() is not None

    async def insert_outcome_within_budget(
        self, row: Mapping[str, Any], max_accepts: int | None, max_spend: float | None
    ) -> tuple[str, tuple[int, float] | None]:
        """Insert an accept of a budgeted offer and count it against the budget in one transaction:
        ("inserted", (accepts, spend) now), ("duplicate", None) (the outcome id was recorded before; nothing
        counted twice) or ("exhausted", None) (nothing written). The counter moves with a conditional UPDATE, which PostgreSQL re-checks under the row
        lock and SQLite runs under its single writer lock, so concurrent accepts can never pass the cap."""
        offer_id, revenue = row["offer_id"], float(row["revenue"])
        conditions = [budgets.c.offer_id == offer_id]
        if max_accepts is not None:
            conditions.append(budgets.c.accepts + 1 <= max_accepts)
        if max_spend is not None:
            conditions.append(budgets.c.spend + revenue <= max_spend)
        try:
            async with translate_errors("outcome"), self.engine.begin() as conn:
                inserted = (
                    await conn.execute(
                        self._insert(outcomes)
                        .values(**row)
                        .on_conflict_do_nothing(index_elements=[outcomes.c.outcome_id])
                        .returning(outcomes.c.outcome_id)
                    )
                ).first()
                if inserted is None:
                    return "duplicate", None
                await conn.execute(
                    self._insert(budgets)
                    .values(offer_id=offer_id, accepts=0, spend=0.0)
                    .on_conflict_do_nothing(index_elements=[budgets.c.offer_id])
                )
                counted = (
                    await conn.execute(
                        update(budgets)
                        .where(*conditions)
                        .values(accepts=budgets.c.accepts + 1, spend=budgets.c.spend + revenue)
                        .returning(budgets.c.accepts, budgets.c.spend)
                    )
                ).first()
                if counted is None:
                    raise _OverBudget
        except _OverBudget:
            return "exhausted", None
        return "inserted", (counted.accepts, counted.spend)

    async def budget_usage(self) -> dict[str, tuple[int, float]]:
        """Offer id -> (accepts, spend) counted so far (read on start-up)."""
        async with translate_errors("budgets"), self.engine.connect() as conn:
            rows = (await conn.execute(select(budgets.c.offer_id, budgets.c.accepts, budgets.c.spend))).all()
        return {r.offer_id: (r.accepts, r.spend) for r in rows}

    async def contacts(
        self, customer_id: str, channel: str, offer_ids: Sequence[str], now: datetime, since: datetime,
        ignore_after: timedelta,
    ) -> dict[str, Contacts]:
        """What the customer's decisions since `since` (and their outcomes) say about these offers, by offer id; an
        offer they were never shown is absent. One aggregate query (see `_CONTACTS`)."""

        async def read() -> list[Row]:
            async with translate_errors("decision log"), self._reader.connect() as conn:
                parameters = {
                    "customer_id": customer_id, "channel": channel, "offer_ids": list(offer_ids), "since": since,
                    "day_start": now - DAY, "week_start": now - WEEK, "ignored_before": now - ignore_after,
                    "responses": sorted(RESPONSES),
                }
                return list((await conn.execute(self._contacts, parameters)).all())

        rows = await uncancelled(read())  # a passed deadline must not cost the pooled connection
        return {r.offer_id: Contacts(r.today, r.week, r.ignored, as_utc(r.declined_at)) for r in rows}

    async def report_totals(self, query: ReportQuery) -> list[GroupTotals]:
        """Counts and revenue sums per group and arm for the report, aggregated in the database (two nested
        GROUP BYs over the window's decisions, found through the created_at index), never row by row in Python."""
        async with translate_errors("decision log"), self._reader.connect() as conn:
            rows = (await conn.execute(_report_statement(query, conn.dialect.name))).all()
        dimensions = query.group_by
        return [
            GroupTotals(
                key={dimension: row._mapping[dimension] or "" for dimension in dimensions},
                customers=row.customers,
                impressions=row.impressions or 0,
                clicks=row.clicks or 0,
                purchases=row.purchases or 0,
                treatment=ArmTotals(row.t_units or 0, row.t_accepts or 0, row.t_revenue or 0.0, row.t_revenue_sq or 0.0),
                control=ArmTotals(row.c_units or 0, row.c_accepts or 0, row.c_revenue or 0.0, row.c_revenue_sq or 0.0),
                bucket_start=datetime.fromtimestamp(int(row.bucket), UTC) if query.bucket_width else None,
                degraded=row.degraded or 0,
                latency_measured=row.latency_measured or 0,
                latency_at_most=tuple(row._mapping[f"latency_le_{i}"] or 0 for i in range(len(LATENCY_BOUNDS_MS))),
            )
            for row in rows
            if row.t_units or row.c_units  # without GROUP BY an empty window still yields one all-NULL row
        ]

    async def pending_outcomes(self, limit: int) -> list[PendingOutcome]:
        """The oldest outcomes not yet forwarded to the profile service."""
        statement = (
            select(
                outcomes.c.outcome_id,
                outcomes.c.customer_id,
                outcomes.c.decision_id,
                outcomes.c.offer_id,
                outcomes.c.type,
                outcomes.c.occurred_at,
            )
            .where(outcomes.c.forwarded_at.is_(None))
            .order_by(outcomes.c.recorded_at, outcomes.c.outcome_id)
            .limit(limit)
        )
        async with translate_errors("outbox"), self._reader.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [
            PendingOutcome(r.outcome_id, r.customer_id, r.decision_id, r.offer_id, r.type, as_utc(r.occurred_at))
            for r in rows
        ]

    async def mark_forwarded(self, outcome_ids: Sequence[str], at: datetime, notes: Mapping[str, str]) -> None:
        """Settle outcomes: forwarded, or (with a note) given up on because the profile rejected them."""
        plain = [oid for oid in outcome_ids if oid not in notes]
        async with translate_errors("outbox"), self.engine.begin() as conn:
            if plain:
                await conn.execute(update(outcomes).where(outcomes.c.outcome_id.in_(plain)).values(forwarded_at=at))
            for outcome_id, note in notes.items():
                await conn.execute(
                    update(outcomes)
                    .where(outcomes.c.outcome_id == outcome_id)
                    .values(forwarded_at=at, forward_note=note)
                )

    @asynccontextmanager
    async def lineage_transaction(self) -> AsyncIterator[SqlLineageTransaction]:
        """One transaction applying one lineage entry (committed when the block ends, rolled back if it raises)."""
        async with translate_errors("decision lineage"), self.engine.begin() as connection:
            yield SqlLineageTransaction(connection, self._insert)

    async def lineage_cursor(self) -> int:
        """The seq of the last lineage journal entry applied (0: none)."""
        async with translate_errors("decision lineage"), self._reader.connect() as connection:
            seq = await connection.scalar(select(lineage_cursor.c.seq).where(lineage_cursor.c.source == LINEAGE_SOURCE))
        return seq or 0

    async def outcome(self, outcome_id: str) -> dict[str, Any] | None:
        """One outcome row as stored (for tools and tests)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(outcomes).where(outcomes.c.outcome_id == outcome_id))).first()
        return dict(row._mapping) if row is not None else None

    async def decision(self, decision_id: str) -> dict[str, Any] | None:
        """One decision row as stored (for tools and tests)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(decisions).where(decisions.c.decision_id == decision_id))).first()
        return dict(row._mapping) if row is not None else None


def _json_elements(array: Any, dialect: str, name: str, value_type: Any) -> Any:
    """A JSON array column as a table of its elements (column `value`), joinable to the row it came from.

    The one dialect-specific piece of the report: SQLite's json_each and PostgreSQL's json_array_elements[_text] are
    both implicitly lateral, so a JOIN to them may refer to the decision row on its left.
    """
    if dialect == "postgresql":
        function = func.json_array_elements_text if value_type is String else func.json_array_elements
    else:
        function = func.json_each
    return function(array).table_valued(column("value", value_type)).alias(name)


def attributed(occurred_at: Any, decided_at: Any, window: timedelta, dialect: str) -> Any:
    """Whether an outcome counts towards its decision: decided_at <= occurred_at <= decided_at + window (the rule
    the trainer labels by). Dialect-specific like `_json_elements`: SQLite stores both times as UTC text of one
    format, so the lower bound compares the text and the upper one julianday differences (good to ~0.1 ms)."""
    if dialect == "postgresql":
        return (occurred_at >= decided_at) & (occurred_at <= decided_at + literal(window, Interval()))
    elapsed = (func.julianday(occurred_at) - func.julianday(decided_at)) * 86_400.0
    return (occurred_at >= decided_at) & (elapsed <= window.total_seconds())


def _time_bucket(created_at: Any, width_seconds: int, dialect: str) -> Any:
    """The start of the decision's time bucket in Unix seconds, buckets aligned to the epoch: whole hours and days
    begin on the UTC hour and midnight. Dialect-specific like `_json_elements` (SQLite stores UTC text)."""
    if dialect == "postgresql":
        return func.floor(func.extract("epoch", created_at) / width_seconds) * width_seconds
    seconds = cast(func.strftime("%s", created_at), Integer)
    return seconds // width_seconds * width_seconds  # SQL integer division, exact (seconds are positive)


def _report_statement(query: ReportQuery, dialect: str) -> Any:
    """Inner query: one row per unit (a decision, or a showing of an offer; times each segment when grouped by it)
    with its group values, arm, outcome flags and revenue. Outer query: per group, units and sums per arm."""
    source = decisions
    group_values: dict[str, Any] = {
        "channel": decisions.c.channel,
        "model_version": decisions.c.model_version,
        "catalogue_version": decisions.c.catalogue_version,
        # The arm is in the stored trace; decisions from before the control group existed were all treatment.
        "arm": func.coalesce(decisions.c.trace["arm"].as_string(), TREATMENT),
    }
    outcome_join = (outcomes.c.decision_id == decisions.c.decision_id) & attributed(
        outcomes.c.occurred_at, decisions.c.created_at, query.attribution_window, dialect
    )
    if query.per_offer:
        shown = _json_elements(decisions.c.offers, dialect, "shown", JSON)
        offer_id = shown.c.value["offer_id"].as_string()
        source = source.join(shown, true())
        group_values["offer"] = offer_id
        outcome_join &= outcomes.c.offer_id == offer_id
    if "segment" in query.group_by:
        segment = _json_elements(decisions.c.segments, dialect, "segment", String)
        source = source.outerjoin(segment, true())  # customers in no segment stay, under ""
        group_values["segment"] = func.coalesce(segment.c.value, "")
    source = source.outerjoin(outcomes, outcome_join)

    def has(*types: str) -> Any:
        return func.max(case((outcomes.c.type.in_(types), 1), else_=0))

    dimensions = list(query.group_by)
    if query.bucket_width is not None:
        group_values["bucket"] = _time_bucket(
            decisions.c.created_at, int(query.bucket_width.total_seconds()), dialect
        )
        dimensions.insert(0, "bucket")
    # Grouped by their labels: PostgreSQL would not match an expression repeated with its own bound parameters.
    wanted = [group_values[dimension].label(dimension) for dimension in dimensions]
    is_control = (group_values["arm"] == CONTROL).label("is_control")
    conditions = [decisions.c.created_at >= query.start, decisions.c.created_at < query.end]
    if query.channel:
        conditions.append(decisions.c.channel == query.channel)
    if query.offer_id:
        conditions.append(group_values["offer"] == query.offer_id)
    units = (
        select(
            *wanted,
            is_control,
            decisions.c.customer_id,
            decisions.c.degraded,
            decisions.c.latency_ms,
            has("impression").label("impression"),
            has("click").label("click"),
            has(*ACCEPTED_OUTCOMES).label("accepted"),
            has("purchase").label("purchase"),
            func.coalesce(func.sum(outcomes.c.revenue), 0.0).label("revenue"),
        )
        .select_from(source)
        .where(*conditions)
        # A unit is a decision (primary key), times its offer and segment when those are grouped by; with an
        # offer_id filter each decision has one showing left. The other columns depend on the decision.
        .group_by(
            decisions.c.decision_id, *wanted, is_control, decisions.c.customer_id, decisions.c.degraded,
            decisions.c.latency_ms,
        )
        .subquery("units")
    )

    def per_arm(control: bool, value: Any) -> Any:
        return func.sum(case((units.c.is_control == control, value), else_=0))

    keys = [units.c[dimension] for dimension in dimensions]
    latency = units.c.latency_ms
    return (
        select(
            *keys,
            func.count(distinct(func.nullif(units.c.customer_id, ""))).label("customers"),
            func.sum(units.c.impression).label("impressions"),
            func.sum(units.c.click).label("clicks"),
            func.sum(units.c.purchase).label("purchases"),
            func.sum(case((units.c.degraded, 1), else_=0)).label("degraded"),
            func.count(latency).label("latency_measured"),
            *(
                func.sum(case((latency <= bound, 1), else_=0)).label(f"latency_le_{index}")
                for index, bound in enumerate(LATENCY_BOUNDS_MS)
            ),
            *(
                per_arm(control, value).label(f"{prefix}_{name}")
                for prefix, control in (("t", False), ("c", True))
                for name, value in (
                    ("units", 1),
                    ("accepts", units.c.accepted),
                    ("revenue", units.c.revenue),
                    ("revenue_sq", units.c.revenue * units.c.revenue),
                )
            ),
        )
        .group_by(*keys)
        .order_by(*keys)
    )
