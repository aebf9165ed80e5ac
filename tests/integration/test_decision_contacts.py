"""The decision log's contact counts (what a customer's history says about offers with contact policies), counted
by the database on SQLite and PostgreSQL: windows, channels, responses, declines, and a history far longer than
any page of rows (a hot customer), counted whole."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from libs.db import create_engine
from libs.protoconv import utcnow
from services.decision.app import migrate_schema
from services.decision.domain.contact import Contacts
from services.decision.storage import DecisionRepository, decisions

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
async def repository(database_url):
    engine = create_engine(database_url)
    await migrate_schema(engine)
    yield DecisionRepository(engine)
    await engine.dispose()


def decision(n: int, customer_id: str, channel: str, at, offer_ids: list[str]) -> dict:
    return {
        "decision_id": f"d{n:05d}", "customer_id": customer_id, "channel": channel, "created_at": at,
        "request": {}, "offers": [{"offer_id": offer_id, "rank": rank} for rank, offer_id in enumerate(offer_ids, 1)],
        "degraded": False, "degraded_reasons": [], "catalogue_version": "v1", "model_version": "m1", "trace": {},
    }


async def outcome(repository: DecisionRepository, n: int, decision_id: str, offer_id: str, kind: str, at) -> None:
    await repository.insert_outcome({
        "outcome_id": f"o{n}", "decision_id": decision_id, "offer_id": offer_id, "type": kind, "occurred_at": at,
        "recorded_at": at, "revenue": 0.0, "customer_id": "ann", "forwarded_at": at, "forward_note": "test",
    })


async def test_counts_per_window_channel_response_and_decline(repository):
    now = utcnow()
    rows = [
        decision(1, "ann", "web", now - 2 * HOUR, ["cap", "cool", "free"]),
        decision(2, "ann", "web", now - 3 * DAY, ["cap", "ignored"]),
        decision(3, "ann", "pos", now - 3 * HOUR, ["cap", "ignored"]),
        decision(4, "ann", "web", now - 10 * DAY, ["cap", "cool"]),  # before the look-back window
        decision(5, "ann", "web", now - HOUR / 2, ["ignored"]),  # too recent to count as ignored
        decision(6, "bob", "web", now - HOUR, ["cap", "cool"]),  # someone else
        decision(7, "ann", "web", now - 6 * DAY, ["ignored", "cool"]),
    ]
    await asyncio.gather(*(repository.save_decision(row) for row in rows))
    await outcome(repository, 1, "d00002", "ignored", "click", now - 3 * DAY)  # a response: not ignored
    await outcome(repository, 2, "d00003", "ignored", "impression", now - 3 * HOUR)  # no response
    await outcome(repository, 3, "d00007", "cool", "decline", now - 6 * DAY)
    await outcome(repository, 4, "d00001", "cool", "decline", now - 2 * HOUR)  # the latest decline
    await outcome(repository, 5, "d00004", "cool", "decline", now - HOUR)  # of a decision out of the window
    await outcome(repository, 6, "d00006", "cool", "decline", now)  # bob's

    counts = await repository.contacts(
        "ann", "web", ["cap", "cool", "ignored", "never"], now, now - 7 * DAY, ignore_after=HOUR
    )
    # "free" was shown but has no policy (not asked for); "never" was never shown.
    assert counts.keys() == {"cap", "cool", "ignored"}
    assert counts["cap"] == Contacts(today=1, week=2, ignored=3)
    assert counts["ignored"] == Contacts(today=1, week=3, ignored=2)
    assert counts["cool"].today == 1 and counts["cool"].week == 2 and counts["cool"].ignored == 0
    assert abs(counts["cool"].declined_at - (now - 2 * HOUR)) < timedelta(milliseconds=1)
    on_pos = await repository.contacts("ann", "pos", ["cap"], now, now - 7 * DAY, ignore_after=HOUR)
    assert on_pos["cap"] == Contacts(today=1, week=1, ignored=3)
    assert await repository.contacts("carol", "web", ["cap"], now, now - 7 * DAY, ignore_after=HOUR) == {}


async def test_a_hot_customer_s_whole_history_is_counted(repository):
    """Two impressions of a capped offer early in the week, then 700 decisions without it: the cap still holds
    (reading the newest 500 decisions, as the log once did, would have missed them)."""
    now = utcnow()
    early = [decision(n, "ann", "web", now - 5 * DAY + n * HOUR, ["weekly", "other"]) for n in range(2)]
    recent = [decision(n, "ann", "web", now - 2 * DAY + n * timedelta(minutes=3), ["other"]) for n in range(2, 702)]
    await asyncio.gather(*(repository.save_decision(row) for row in [*early, *recent]))
    counts = await repository.contacts("ann", "web", ["weekly", "other"], now, now - 7 * DAY, ignore_after=HOUR)
    assert counts["weekly"] == Contacts(today=0, week=2, ignored=2)
    assert counts["other"].week == 702


async def test_a_decision_logged_without_offer_ids_is_counted_from_its_offers(repository):
    """Decisions logged before migration 0006 (or by a replica still on 0005) have no narrow column."""
    now = utcnow()
    await repository.save_decision(decision(1, "ann", "web", now - 2 * HOUR, ["cap"]))
    async with repository.engine.begin() as connection:
        await connection.execute(decisions.insert(), [decision(2, "ann", "web", now - 3 * HOUR, ["cap", "other"])])
        stored = (await connection.execute(select(decisions.c.decision_id, decisions.c.offer_ids))).all()
    assert sorted(stored) == [("d00001", ["cap"]), ("d00002", None)]
    counts = await repository.contacts("ann", "web", ["cap", "other"], now, now - 7 * DAY, ignore_after=HOUR)
    assert counts == {"cap": Contacts(today=2, week=2, ignored=2), "other": Contacts(today=1, week=1, ignored=1)}


async def test_a_group_commit_of_the_log_applies_whole_or_not_at_all(repository):
    # On PostgreSQL the batch is one autocommit executemany (one round trip): its atomicity is asyncpg's, checked here.
    now = utcnow()
    await repository.save_decision(decision(1, "ann", "web", now, ["cap"]))
    batch = [decision(2, "ann", "web", now, ["cap"]), decision(1, "bob", "web", now, ["cap"]),  # d00001 again
             decision(3, "ann", "web", now, ["cap"])]
    results = await asyncio.gather(*(repository.save_decision(row) for row in batch), return_exceptions=True)
    assert all(isinstance(result, Exception) for result in results)  # one INSERT for the three: all share its fate
    async with repository.engine.connect() as conn:
        stored = (await conn.execute(select(decisions.c.decision_id, decisions.c.customer_id))).all()
    assert [tuple(row) for row in stored] == [("d00001", "ann")]
    await repository.save_decision(decision(2, "ann", "web", now, ["cap"]))  # the connection is fine afterwards
