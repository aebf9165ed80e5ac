"""Identity lineage in the decision log: a Forget pseudonymises the erased customers' decisions and outcomes.

Identity journals every merge, unmerge and erasure in commit order (`ListLineage`). The decision keeps the seq of
the last entry it applied and applies each new entry in ONE transaction that also moves that cursor from the value
it read, so an entry takes effect exactly once across restarts, and of replicas following together only one applies
it (the others find the cursor moved, roll back and re-read).

Merges matter only for erasure: the decision log keeps the customer id each row was written with, so forgetting a
customer must also reach the rows of the customers merged into it (identity erased their identifiers with its own).
MERGE records an alias merged -> survivor, UNMERGE drops it again (by merge id).

FORGET(C): C and every customer merged into C, transitively, each get a fresh random pseudonym ("erased-<32 hex>",
never derived from the id, and the id -> pseudonym mapping is kept nowhere), written over `customer_id` of their
decisions and outcomes and over the request's `customer.customer_id`; their aliases go. The rows stay, so
GetReport's totals still add up, and its customer count counts each pseudonym as the one customer it was. Outcomes
of a pseudonym are never forwarded to the profile (there is nobody to update).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from libs.errors import NextBestError
from libs.lineage import LINEAGE_PAGE, LineageEntry, LineageKind, catch_up

_log = logging.getLogger(__name__)

#: Deadline of one ListLineage call: background work, so generous but bounded.
LINEAGE_TIMEOUT_SECONDS = 5.0
#: Longer than any request that resolved a customer (or read its decision) may take to write its row.
LATE_WRITE_SECONDS = 10.0
#: What every pseudonym starts with: how the outbox and RecordOutcome tell an erased customer from a live one.
PSEUDONYM_PREFIX = "erased-"
#: The forward note of an outcome of an erased customer (settled without reaching the profile).
ERASED_NOTE = "customer erased: not forwarded"


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    """The parts of a logged decision that may name a customer."""

    decision_id: str
    customer_id: str
    request: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LoggedOutcome:
    outcome_id: str
    customer_id: str


class CursorMoved(Exception):
    """Another follower applied the entry first: the transaction rolls back and the cursor is read again."""


def new_pseudonym() -> str:
    """A fresh random stand-in for an erased customer id: 128 random bits, nothing derived from the id."""
    return PSEUDONYM_PREFIX + secrets.token_hex(16)


def is_pseudonym(customer_id: str) -> bool:
    return customer_id.startswith(PSEUDONYM_PREFIX)


def pseudonyms_for(customer_ids: Iterable[str]) -> dict[str, str]:
    """One fresh pseudonym per customer, so each erased customer still counts as one (and not as the others)."""
    return {customer_id: new_pseudonym() for customer_id in dict.fromkeys(customer_ids)}


def pseudonymised_request(request: Mapping[str, Any], pseudonyms: Mapping[str, str]) -> Mapping[str, Any]:
    """The stored request with `customer.customer_id` replaced when it names an erased customer (a copy; the rest,
    identifier types and features included, holds no identifier and is kept for training and OPE)."""
    customer = request.get("customer")
    if not isinstance(customer, Mapping) or customer.get("customer_id") not in pseudonyms:
        return request
    return {**request, "customer": {**customer, "customer_id": pseudonyms[customer["customer_id"]]}}


def pseudonymise(
    decisions: Sequence[LoggedDecision], outcomes: Sequence[LoggedOutcome], pseudonyms: Mapping[str, str]
) -> tuple[list[LoggedDecision], list[LoggedOutcome]]:
    """The rows rewritten under the pseudonyms; rows naming none of the erased customers are left out."""
    rewritten = []
    for decision in decisions:
        request = pseudonymised_request(decision.request, pseudonyms)
        customer_id = pseudonyms.get(decision.customer_id, decision.customer_id)
        if customer_id != decision.customer_id or request is not decision.request:
            rewritten.append(LoggedDecision(decision.decision_id, customer_id, request))
    renamed = [
        LoggedOutcome(outcome.outcome_id, pseudonyms[outcome.customer_id])
        for outcome in outcomes
        if outcome.customer_id in pseudonyms
    ]
    return rewritten, renamed


class LineageSource(Protocol):
    """Identity's lineage journal."""

    async def list_lineage(self, after_seq: int, limit: int, timeout: float) -> list[LineageEntry]:
        """Entries with seq > `after_seq` in seq order (identity guarantees seq order is commit order)."""
        ...


class LineageTransaction(Protocol):
    """The storage steps of applying one entry, on one open transaction."""

    async def advance_cursor(self, from_seq: int, to_seq: int) -> bool:
        """Move the cursor from `from_seq` to `to_seq` (the first statement: it serialises followers); False when
        it is no longer at `from_seq`."""
        ...

    async def add_alias(self, merged_id: str, survivor_id: str, merge_id: str) -> None: ...

    async def remove_alias(self, merge_id: str) -> bool:
        """False when there was no such alias (e.g. erased since)."""
        ...

    async def group(self, root: str) -> list[str]:
        """`root` and every customer merged into it, transitively."""
        ...

    async def logged(
        self, customer_ids: Sequence[str], decision_ids: Sequence[str]
    ) -> tuple[list[LoggedDecision], list[LoggedOutcome]]:
        """The decisions of these customers, and the outcomes of theirs among those decisions and `decision_ids`
        (outcomes are found through their decisions' index; an outcome names its decision's customer)."""
        ...

    async def rewrite(self, decisions: Sequence[LoggedDecision], outcomes: Sequence[LoggedOutcome]) -> None:
        """Store the rows' new customer ids (and the decisions' new requests), batched."""
        ...

    async def drop_aliases(self, customer_ids: Sequence[str]) -> None:
        """Delete every alias from or to these customers."""
        ...


class LineageRepository(Protocol):
    def lineage_transaction(self) -> AbstractAsyncContextManager[LineageTransaction]: ...

    async def lineage_cursor(self) -> int:
        """The seq of the last journal entry applied (0: none)."""
        ...


class LineageFollower:
    """Applies identity's lineage journal to the decision log: on `catch_up`, and from `run` every poll interval.

    A decision or outcome being written while its customer is forgotten (resolved, or read from the decision, just
    before identity's commit) can land after the erasure was applied: the follower sweeps the customers it erased
    once more on its first round `LATE_WRITE_SECONDS` later, from memory only (nothing about them is stored).
    """

    def __init__(
        self,
        repository: LineageRepository,
        source: LineageSource,
        poll_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repository = repository
        self._source = source
        self._poll_seconds = poll_seconds
        self._clock = clock
        #: (when due, customers, their decisions) erased by this process, to sweep once more.
        self._sweep_next: list[tuple[float, list[str], list[str]]] = []

    async def run(self) -> None:
        """Follow the journal until cancelled; an unreachable identity or database is retried next interval."""
        while True:
            try:
                await self.sweep_late()
                await self.catch_up()
            except NextBestError as exc:
                _log.warning("lineage follower: %s; retrying in %.1f s", exc, self._poll_seconds)
            await asyncio.sleep(self._poll_seconds)

    async def catch_up(self) -> int:
        """Apply every entry the journal has now; returns how many this process applied."""
        return await catch_up(self._repository.lineage_cursor, lambda after: self._source.list_lineage(after, LINEAGE_PAGE, LINEAGE_TIMEOUT_SECONDS), self.apply)

    async def apply(self, entry: LineageEntry, cursor: int) -> bool:
        """Apply one entry in one transaction with the cursor move from `cursor`; False when not at `cursor`."""
        erased: list[str] = []
        decisions: list[str] = []
        try:
            async with self._repository.lineage_transaction() as tx:
                if not await tx.advance_cursor(cursor, entry.seq):
                    raise CursorMoved
                match entry.kind:
                    case LineageKind.MERGE:
                        await tx.add_alias(entry.merged_id, entry.survivor_id, entry.merge_id)
                    case LineageKind.UNMERGE:
                        if not await tx.remove_alias(entry.merge_id):
                            _log.warning("lineage: merge %s has no alias here (erased since?)", entry.merge_id)
                    case LineageKind.FORGET:
                        erased = await tx.group(entry.customer_id)
                        decisions, _ = await self._pseudonymise(tx, erased, ())
                        await tx.drop_aliases(erased)
        except CursorMoved:
            return False
        if erased:  # committed
            self._sweep_next.append((self._clock() + LATE_WRITE_SECONDS, erased, decisions))
        return True

    async def sweep_late(self) -> int:
        """Pseudonymise rows written since of the customers erased at least `LATE_WRITE_SECONDS` ago (each such
        erasure is swept once); returns how many rows changed."""
        count = 0
        while self._sweep_next and self._sweep_next[0][0] <= self._clock():
            _, customer_ids, decision_ids = self._sweep_next[0]
            async with self._repository.lineage_transaction() as tx:
                count += (await self._pseudonymise(tx, customer_ids, decision_ids))[1]
            self._sweep_next.pop(0)
        if count:
            _log.warning("lineage: %d decision log row(s) written during an erasure pseudonymised late", count)
        return count

    @staticmethod
    async def _pseudonymise(
        tx: LineageTransaction, customer_ids: Sequence[str], decision_ids: Sequence[str]
    ) -> tuple[list[str], int]:
        """Rewrite the customers' rows; returns the ids of their decisions and how many rows changed."""
        decisions, outcomes = await tx.logged(customer_ids, decision_ids)
        rewritten, renamed = pseudonymise(decisions, outcomes, pseudonyms_for(customer_ids))
        if rewritten or renamed:
            await tx.rewrite(rewritten, renamed)
        return [d.decision_id for d in decisions], len(rewritten) + len(renamed)
