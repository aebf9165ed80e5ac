"""The decision's side of identity lineage: pseudonyms, the rewrite of logged rows, the follower applying the
journal exactly once (against an in-memory repository whose transactions commit or roll back as a database's), and
the outbox never forwarding an erased customer's outcome."""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from libs.errors import Unavailable
from services.decision.domain.lineage import (
    ERASED_NOTE,
    LATE_WRITE_SECONDS,
    LineageEntry,
    LineageFollower,
    LineageKind,
    LoggedDecision,
    LoggedOutcome,
    is_pseudonym,
    new_pseudonym,
    pseudonymise,
    pseudonymised_request,
    pseudonyms_for,
)
from services.decision.domain.model import PendingOutcome
from services.decision.outbox import OutcomeForwarder

MERGE, UNMERGE, FORGET = LineageKind.MERGE, LineageKind.UNMERGE, LineageKind.FORGET


def test_a_pseudonym_is_fresh_random_and_recognisable():
    drawn = {new_pseudonym() for _ in range(100)}
    assert len(drawn) == 100
    assert all(re.fullmatch(r"erased-[0-9a-f]{32}", p) and is_pseudonym(p) for p in drawn)
    assert not is_pseudonym("c-ann") and not is_pseudonym("")


def test_each_customer_gets_its_own_pseudonym_every_time():
    first, second = pseudonyms_for(["c-a", "c-b", "c-a"]), pseudonyms_for(["c-a", "c-b"])
    assert set(first) == {"c-a", "c-b"} and first["c-a"] != first["c-b"]
    assert first["c-a"] != second["c-a"]  # never derived from the id
    assert "c-a" not in first["c-a"]


def test_the_request_keeps_everything_but_the_erased_id():
    request = {"rpc": "Decide", "customer": {"customer_id": "c-a", "identifier_types": [1]}, "known_customer": True}
    rewritten = pseudonymised_request(request, {"c-a": "erased-1"})
    assert rewritten == {**request, "customer": {"customer_id": "erased-1", "identifier_types": [1]}}
    assert request["customer"]["customer_id"] == "c-a"  # a copy: the row read is not changed in place
    untouched = {"customer": {"customer_id": "", "identifier_types": [1]}}
    assert pseudonymised_request(untouched, {"c-a": "erased-1"}) is untouched
    assert pseudonymised_request({"rpc": "Decide"}, {"c-a": "erased-1"}) == {"rpc": "Decide"}


def test_rows_are_rewritten_under_one_pseudonym_per_customer():
    decisions = [
        LoggedDecision("d1", "c-a", {"customer": {"customer_id": ""}}),
        LoggedDecision("d2", "c-b", {"customer": {"customer_id": "c-b"}}),
        LoggedDecision("d3", "c-other", {"customer": {"customer_id": "c-other"}}),
    ]
    outcomes = [LoggedOutcome("o1", "c-a"), LoggedOutcome("o2", "c-b"), LoggedOutcome("o3", "c-other")]
    names = {"c-a": "erased-a", "c-b": "erased-b"}
    rewritten, renamed = pseudonymise(decisions, outcomes, names)
    assert rewritten == [
        LoggedDecision("d1", "erased-a", {"customer": {"customer_id": ""}}),
        LoggedDecision("d2", "erased-b", {"customer": {"customer_id": "erased-b"}}),
    ]
    assert renamed == [LoggedOutcome("o1", "erased-a"), LoggedOutcome("o2", "erased-b")]


# ---------------------------------------------------------------------------------------------------- follower


@dataclass
class Store:
    """What the database holds: the cursor, aliases (merged -> (survivor, merge id)) and the logged rows."""

    cursor: int = 0
    aliases: dict[str, tuple[str, str]] = field(default_factory=dict)
    decisions: dict[str, LoggedDecision] = field(default_factory=dict)
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # outcome id -> (decision id, customer id)


class MemoryTransaction:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def advance_cursor(self, from_seq: int, to_seq: int) -> bool:
        if self.store.cursor != from_seq:
            return False
        self.store.cursor = to_seq
        return True

    async def add_alias(self, merged_id: str, survivor_id: str, merge_id: str) -> None:
        self.store.aliases[merged_id] = (survivor_id, merge_id)

    async def remove_alias(self, merge_id: str) -> bool:
        found = [merged for merged, (_, mid) in self.store.aliases.items() if mid == merge_id]
        for merged in found:
            del self.store.aliases[merged]
        return bool(found)

    async def group(self, root: str) -> list[str]:
        members = [root]
        for member in members:
            members += [m for m, (s, _) in self.store.aliases.items() if s == member and m not in members]
        return members

    async def logged(self, customer_ids: Sequence[str], decision_ids: Sequence[str]):
        found = [d for d in self.store.decisions.values() if d.customer_id in customer_ids]
        ids = {d.decision_id for d in found} | set(decision_ids)
        outcomes = [
            LoggedOutcome(oid, cid)
            for oid, (did, cid) in self.store.outcomes.items()
            if did in ids and cid in customer_ids
        ]
        return found, outcomes

    async def rewrite(self, decisions: Sequence[LoggedDecision], outcomes: Sequence[LoggedOutcome]) -> None:
        for decision in decisions:
            self.store.decisions[decision.decision_id] = decision
        for outcome in outcomes:
            self.store.outcomes[outcome.outcome_id] = (self.store.outcomes[outcome.outcome_id][0], outcome.customer_id)

    async def drop_aliases(self, customer_ids: Sequence[str]) -> None:
        self.store.aliases = {
            m: (s, mid) for m, (s, mid) in self.store.aliases.items() if m not in customer_ids and s not in customer_ids
        }


class MemoryRepository:
    """Transactions work on a copy that replaces the store only when the block ends without an exception."""

    def __init__(self) -> None:
        self.store = Store()
        #: Commits of another replica, each made just before this process's next transaction begins.
        self.other_replica: list[Callable[[Store], None]] = []
        self.transactions = 0

    @asynccontextmanager
    async def lineage_transaction(self) -> AsyncIterator[MemoryTransaction]:
        if self.other_replica:
            self.other_replica.pop(0)(self.store)
        working = copy.deepcopy(self.store)
        yield MemoryTransaction(working)
        self.store = working
        self.transactions += 1

    async def lineage_cursor(self) -> int:
        return self.store.cursor

    def decide(self, decision_id: str, customer_id: str, *, named: bool = False) -> None:
        request = {"customer": {"customer_id": customer_id if named else "", "identifier_types": []}}
        self.store.decisions[decision_id] = LoggedDecision(decision_id, customer_id, request)

    def outcome(self, outcome_id: str, decision_id: str) -> None:
        self.store.outcomes[outcome_id] = (decision_id, self.store.decisions[decision_id].customer_id)

    def customer_of(self, decision_id: str) -> str:
        return self.store.decisions[decision_id].customer_id


class Journal:
    def __init__(self, *entries: LineageEntry) -> None:
        self.entries = list(entries)
        self.down = False

    async def list_lineage(self, after_seq: int, limit: int, timeout: float) -> list[LineageEntry]:
        if self.down:
            raise Unavailable("identity service could not list lineage: UNAVAILABLE")
        return [e for e in self.entries if e.seq > after_seq][:limit]


def merge(seq: int, survivor: str, merged: str, merge_id: str) -> LineageEntry:
    return LineageEntry(seq, MERGE, merge_id=merge_id, survivor_id=survivor, merged_id=merged)


def forget(seq: int, customer_id: str) -> LineageEntry:
    return LineageEntry(seq, FORGET, customer_id=customer_id)


@pytest.fixture
def repository() -> MemoryRepository:
    repository = MemoryRepository()
    for decision_id, customer_id in (("d-a", "c-a"), ("d-b", "c-b"), ("d-c", "c-c"), ("d-z", "c-z")):
        repository.decide(decision_id, customer_id, named=decision_id == "d-b")
    repository.outcome("o-a", "d-a")
    repository.outcome("o-b", "d-b")
    return repository


async def test_forget_reaches_the_customer_and_everyone_merged_into_it_transitively(repository):
    # c-b into c-a, c-c into c-b: forgetting c-a erases all three; c-z stays.
    journal = Journal(merge(1, "c-a", "c-b", "m1"), merge(2, "c-b", "c-c", "m2"), forget(5, "c-a"))
    follower = LineageFollower(repository, journal, poll_seconds=3600)
    assert await follower.catch_up() == 3
    names = {d: repository.customer_of(d) for d in ("d-a", "d-b", "d-c")}
    assert all(is_pseudonym(name) for name in names.values()) and len(set(names.values())) == 3
    assert repository.customer_of("d-z") == "c-z"
    assert repository.store.outcomes == {"o-a": ("d-a", names["d-a"]), "o-b": ("d-b", names["d-b"])}
    assert repository.store.decisions["d-b"].request["customer"]["customer_id"] == names["d-b"]
    assert repository.store.aliases == {} and repository.store.cursor == 5
    assert await follower.catch_up() == 0  # nothing applied twice


async def test_an_unmerged_customer_is_not_forgotten_with_its_former_survivor(repository):
    journal = Journal(
        merge(1, "c-a", "c-b", "m1"),
        LineageEntry(2, UNMERGE, merge_id="m1", survivor_id="c-a", merged_id="c-b"),
        forget(3, "c-a"),
    )
    assert await LineageFollower(repository, journal, poll_seconds=3600).catch_up() == 3
    assert is_pseudonym(repository.customer_of("d-a"))
    assert repository.customer_of("d-b") == "c-b" and repository.store.outcomes["o-b"] == ("d-b", "c-b")


async def test_an_entry_another_replica_applied_is_not_applied_again(repository):
    journal = Journal(merge(1, "c-a", "c-b", "m1"), forget(2, "c-a"))

    def other_replica_merges(store: Store) -> None:  # it read the same cursor and committed the merge first
        store.aliases["c-b"] = ("c-a", "m1")
        store.cursor = 1

    repository.other_replica.append(other_replica_merges)
    follower = LineageFollower(repository, journal, poll_seconds=3600)
    assert await follower.catch_up() == 1  # only the forget, after re-reading the cursor
    assert repository.store.cursor == 2 and repository.transactions == 1  # the first one rolled back
    # The forget saw the other replica's alias: c-b went with c-a; each once, under its own pseudonym.
    assert is_pseudonym(repository.customer_of("d-a")) and is_pseudonym(repository.customer_of("d-b"))


async def test_a_failed_entry_leaves_the_cursor_and_the_rows_as_they_were(repository):
    class Failing(MemoryTransaction):
        async def rewrite(self, decisions, outcomes) -> None:
            raise Unavailable("decision lineage: database unavailable")

    original = repository.lineage_transaction

    @asynccontextmanager
    async def failing_transaction():
        async with original() as tx:
            yield Failing(tx.store)

    repository.lineage_transaction = failing_transaction
    with pytest.raises(Unavailable):
        await LineageFollower(repository, Journal(forget(1, "c-a")), poll_seconds=3600).catch_up()
    assert repository.store.cursor == 0 and repository.customer_of("d-a") == "c-a"


async def test_rows_written_while_the_erasure_was_applied_are_swept_once_later(repository):
    now = [100.0]
    follower = LineageFollower(repository, Journal(forget(1, "c-a")), poll_seconds=3600, clock=lambda: now[0])
    await follower.catch_up()
    erased_as = repository.customer_of("d-a")
    # In flight during the erasure: a decision resolved to c-a, an outcome read d-a before it was rewritten.
    repository.decide("d-late", "c-a")
    repository.store.outcomes["o-late"] = ("d-a", "c-a")
    assert await follower.sweep_late() == 0  # not yet: requests in flight may still be writing
    assert repository.customer_of("d-late") == "c-a"
    now[0] += LATE_WRITE_SECONDS
    assert await follower.sweep_late() == 2
    assert is_pseudonym(repository.customer_of("d-late"))
    assert is_pseudonym(repository.store.outcomes["o-late"][1])
    assert repository.customer_of("d-a") == erased_as  # rows erased before are not touched again
    assert await follower.sweep_late() == 0  # swept once, then forgotten


async def test_an_unreachable_journal_applies_nothing(repository):
    journal = Journal(forget(1, "c-a"))
    journal.down = True
    with pytest.raises(Unavailable):
        await LineageFollower(repository, journal, poll_seconds=3600).catch_up()
    assert repository.transactions == 0 and repository.customer_of("d-a") == "c-a"


# ---------------------------------------------------------------------------------------------------- outbox


class PendingOutbox:
    def __init__(self, *pending: PendingOutcome) -> None:
        self.pending = list(pending)
        self.settled: dict[str, str | None] = {}

    async def pending_outcomes(self, limit: int) -> list[PendingOutcome]:
        return self.pending[:limit]

    async def mark_forwarded(self, outcome_ids, at, notes) -> None:
        self.settled.update({outcome_id: notes.get(outcome_id) for outcome_id in outcome_ids})


class RecordingProfile:
    def __init__(self, reject: dict[int, str] | None = None) -> None:
        self.sent: list[list[str]] = []
        self.reject = reject or {}

    async def ingest_outcomes(self, outcomes, timeout: float) -> dict[int, str]:
        self.sent.append([o.outcome_id for o in outcomes])
        return self.reject


def pending(outcome_id: str, customer_id: str) -> PendingOutcome:
    return PendingOutcome(outcome_id, customer_id, "d1", "tee", "click", datetime(2026, 1, 1, tzinfo=UTC))


async def test_the_outbox_settles_outcomes_of_erased_customers_without_sending_them():
    outbox = PendingOutbox(pending("o1", new_pseudonym()), pending("o2", "c-a"), pending("o3", "c-b"))
    profile = RecordingProfile(reject={1: "customer_id: erased"})  # the second one sent, o3
    assert await OutcomeForwarder(outbox, profile, 10, 1.0).forward_once() == 3
    assert profile.sent == [["o2", "o3"]]
    assert outbox.settled == {"o1": ERASED_NOTE, "o2": None, "o3": "rejected by profile: customer_id: erased"}


async def test_a_batch_of_erased_customers_alone_never_calls_the_profile():
    outbox = PendingOutbox(pending("o1", new_pseudonym()))
    profile = RecordingProfile()
    assert await OutcomeForwarder(outbox, profile, 10, 1.0).forward_once() == 1
    assert profile.sent == [] and outbox.settled == {"o1": ERASED_NOTE}
