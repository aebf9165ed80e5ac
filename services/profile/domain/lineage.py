"""Identity lineage in the profile: merges, unmerges and erasures, followed from identity's journal exactly once.

Identity appends every merge, unmerge and erasure to a journal in commit order (`ListLineage`); the profile keeps
the seq of the last entry it applied and applies each new entry in ONE transaction that also moves that cursor, so
an entry takes effect exactly once across restarts, and replicas following together never apply one twice (the
cursor moves only from the value read; the loser finds it moved and re-reads).

The model: events are never rewritten, they keep the customer id they arrived with. A merge records an alias
(merged -> survivor, with the merge id); a customer's profile is the fold of the events of its *group* (itself and
every customer merged into it, transitively) in event-time order from an empty state. So:

- MERGE(survivor A, merged B): alias B -> A; A is refolded from its group's events; B's state and segment
  memberships go (A's are re-evaluated; memberships A already had keep their "since").
- UNMERGE: the alias goes; A and B are each refolded from their own groups, which splits them back exactly.
- FORGET(C): erasing a person erases everything attributed to them: the events, state, memberships and aliases
  of C and of every customer merged into C (identity erased those customers' identifiers with C's). Their ids are
  kept as erased (ids only, no data), so that late events naming them are refused instead of starting anew.

Reads of a merged id answer with the survivor's profile (its `customer_id` says whose), and late events still
carrying a merged id are stored with that id and folded into the survivor's state (`ProfileService.ingest`), so
an unmerge still splits them back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from libs.errors import NextBestError
from libs.lineage import LINEAGE_PAGE, LineageEntry, LineageKind, catch_up
from services.profile.domain.events import AcceptedEvent
from services.profile.domain.segments import SegmentRegistry
from services.profile.domain.state import FOLD_VERSION, ProfileState

_log = logging.getLogger(__name__)



class LineageMoved(Exception):
    """A customer of an ingest transaction was merged or unmerged while it waited for its locks: retry it."""


class LineageSource(Protocol):
    """Identity's lineage journal."""

    async def entries(self, after_seq: int, limit: int) -> list[LineageEntry]:
        """Entries with seq > `after_seq` in seq order (identity guarantees seq order is commit order)."""
        ...


class LineageTransaction(Protocol):
    """The storage steps of applying one entry, on one open transaction."""

    def announce(self, customer_ids: Iterable[str]) -> None:
        """Publish these customers as changed once the transaction commits (to every replica's change feed)."""
        ...

    async def advance_cursor(self, from_seq: int, to_seq: int) -> bool:
        """Move the cursor from `from_seq` to `to_seq` (the first statement: it serialises appliers); False when
        it is no longer at `from_seq` (another replica applied the entry)."""
        ...

    async def roots(self, customer_ids: Sequence[str]) -> dict[str, str]:
        """For those of the customers merged into another: the customer whose profile they are part of."""
        ...

    async def group(self, root: str) -> list[str]:
        """`root` and every customer merged into it, transitively."""
        ...

    async def add_alias(self, merged_id: str, survivor_id: str, merge_id: str, at: datetime) -> None:
        ...

    async def remove_alias(self, merge_id: str) -> bool:
        """False when there was no such alias (e.g. erased since)."""
        ...

    async def events_of(self, customer_ids: Sequence[str]) -> list[AcceptedEvent]:
        ...

    async def lock_states(self, customer_ids: Sequence[str], now: datetime) -> dict[str, ProfileState]:
        ...

    async def save_states(self, states: Mapping[str, ProfileState], now: datetime) -> None:
        ...

    async def update_memberships(
        self, entered: Sequence[tuple[str, str, datetime]], left: Sequence[tuple[str, str]]
    ) -> None:
        ...

    async def delete_profiles(self, customer_ids: Sequence[str]) -> None:
        """Delete the states and segment memberships (not the events)."""
        ...

    async def erase(self, customer_ids: Sequence[str], at: datetime) -> None:
        """Delete the events, states, memberships and aliases of these customers, and remember them as erased
        (their late events are refused)."""
        ...


class LineageRepository(Protocol):
    """What the follower needs from the profile's storage."""

    def transaction(self) -> AbstractAsyncContextManager[LineageTransaction]:
        ...

    async def lineage_cursor(self) -> int:
        """The seq of the last journal entry applied (0: none)."""
        ...

    async def fold_versions(self, after: str, limit: int) -> list[tuple[str, int]]:
        """Up to `limit` customers with a stored state after `after`, in id order, each with the `FOLD_VERSION`
        its state was folded with (0: stored before there were fold versions)."""
        ...


#: Customers rebuilt per transaction by `LineageFollower.refold` (their rows stay locked until it commits).
REFOLD_CHUNK = 100
#: Stored states whose fold version one statement of `refold_outdated` reads (ids and numbers only).
FOLD_SCAN_PAGE = 1000


def fold(events: Iterable[AcceptedEvent], now: datetime) -> ProfileState:
    """A state built from scratch: the events applied in event-time order (ties by event id), as ingest would."""
    state = ProfileState()
    for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id)):
        state.apply(event, now)
    return state


class LineageFollower:
    """Applies identity's lineage journal to the profile: on `catch_up`, and from `run` every poll interval."""

    def __init__(
        self,
        repository: LineageRepository,
        source: LineageSource,
        segments: SegmentRegistry,
        clock: Callable[[], datetime],
        poll_seconds: float,
    ) -> None:
        self._repository = repository
        self._source = source
        self._segments = segments
        self._clock = clock
        self._poll_seconds = poll_seconds

    async def run(self) -> None:
        """Follow the journal until cancelled; an unreachable identity or database is retried next interval."""
        while True:
            try:
                await self.catch_up()
            except NextBestError as exc:
                _log.warning("lineage follower: %s; retrying in %.1f s", exc, self._poll_seconds)
            await asyncio.sleep(self._poll_seconds)

    async def refold(self, customer_ids: Sequence[str]) -> int:
        """Rebuild these customers' profiles from their stored events, as a merge does (a customer merged into
        another rebuilds its survivor; memberships that still hold keep "since"), REFOLD_CHUNK customers per
        transaction: after a release adds a trait that needs history or corrects a trait's arithmetic. Returns
        how many profiles were rebuilt; a customer without events has none (an empty state is removed)."""
        rebuilt = 0
        for start in range(0, len(customer_ids), REFOLD_CHUNK):
            chunk = customer_ids[start : start + REFOLD_CHUNK]
            now = self._clock()
            async with self._repository.transaction() as tx:
                found = await tx.roots(chunk)
                roots = sorted({found.get(customer_id, customer_id) for customer_id in chunk})
                locked = await tx.lock_states(roots, now)  # ingest of these customers waits, as for a merge
                changed, saved = await self._refold(tx, locked, roots, [], now)
                tx.announce(changed)
            rebuilt += len(saved)
        return rebuilt

    async def refold_outdated(self) -> int:
        """Rebuild every state an older release folded (a lower `FOLD_VERSION`, e.g. one stored before the net spend
        windows kept the refunds' days), so an upgrade corrects every profile without an operator's refold. Scans
        the states in id order, FOLD_SCAN_PAGE at a time without locks, and refolds the outdated ones as `refold`
        does (under their row locks), resting after each page as long as it took. A state an older replica saves
        again during a rolling upgrade is outdated again, and the next run rebuilds it. Returns how many profiles
        were rebuilt."""
        rebuilt, after = 0, ""
        while page := await self._repository.fold_versions(after, FOLD_SCAN_PAGE):
            after = page[-1][0]
            outdated = [customer_id for customer_id, version in page if version < FOLD_VERSION]
            if outdated:
                started = time.monotonic()
                rebuilt += await self.refold(outdated)
                # After an upgrade every state may be outdated: rest as long as the page took, so serving and
                # ingest keep at least half of this process (and the locks) while the rebuild runs.
                await asyncio.sleep(time.monotonic() - started)
        if rebuilt:
            _log.info("rebuilt %d profiles folded by an older release (fold version < %d)", rebuilt, FOLD_VERSION)
        return rebuilt

    async def catch_up(self) -> int:
        """Apply every entry the journal has now; returns how many this process applied."""
        return await catch_up(self._repository.lineage_cursor, lambda after: self._source.entries(after, LINEAGE_PAGE), self.apply)

    async def apply(self, entry: LineageEntry, cursor: int) -> bool:
        """Apply one entry in one transaction with the cursor move from `cursor`; False when not at `cursor`."""
        now = self._clock()
        async with self._repository.transaction() as tx:
            if not await tx.advance_cursor(cursor, entry.seq):
                return False
            match entry.kind:
                case LineageKind.MERGE:
                    changed = await self._merge(tx, entry, now)
                case LineageKind.UNMERGE:
                    changed = await self._unmerge(tx, entry, now)
                case LineageKind.FORGET:
                    changed = await self._forget(tx, entry.customer_id, now)
            tx.announce(changed)  # once committed: the decision's caches drop these customers
        return True

    async def _merge(self, tx: LineageTransaction, entry: LineageEntry, now: datetime) -> set[str]:
        root = (await tx.roots([entry.survivor_id])).get(entry.survivor_id, entry.survivor_id)
        # Lock before reading events: an ingest for these customers either committed first (its events are read
        # here) or waits for this commit and then sees the alias (and retries, see ProfileService._apply).
        locked = await tx.lock_states(sorted({root, entry.merged_id}), now)
        await tx.add_alias(entry.merged_id, entry.survivor_id, entry.merge_id, now)
        return (await self._refold(tx, locked, [root], [entry.merged_id], now))[0]

    async def _unmerge(self, tx: LineageTransaction, entry: LineageEntry, now: datetime) -> set[str]:
        root = (await tx.roots([entry.survivor_id])).get(entry.survivor_id, entry.survivor_id)
        locked = await tx.lock_states(sorted({root, entry.merged_id}), now)
        if not await tx.remove_alias(entry.merge_id):
            _log.warning("lineage: merge %s has no alias here (erased since?)", entry.merge_id)
        return (await self._refold(tx, locked, sorted({root, entry.merged_id}), [], now))[0]

    async def _forget(self, tx: LineageTransaction, customer_id: str, now: datetime) -> set[str]:
        # Identity erases only customers not merged into another; were one, its survivor would be refolded.
        survivor = (await tx.roots([customer_id])).get(customer_id)
        erased = await tx.group(customer_id)
        locked = await tx.lock_states(sorted({*erased, *([survivor] if survivor else [])}), now)
        await tx.erase(erased, now)  # the states locked (or created) above go too
        changed = set(erased)
        if survivor:
            changed |= (await self._refold(tx, locked, [survivor], [], now))[0]
        return changed

    async def _refold(
        self,
        tx: LineageTransaction,
        locked: Mapping[str, ProfileState],
        roots: Sequence[str],
        gone: Sequence[str],
        now: datetime,
    ) -> tuple[set[str], set[str]]:
        """Rebuild each root's state from its group's events (no events: no profile) and drop the states of the
        `gone` customers, segment memberships following. Returns every customer whose answer changed, and the
        roots rebuilt (those with events)."""
        changed = set(gone)
        removed = set(gone)
        saved: dict[str, ProfileState] = {}
        entered: list[tuple[str, str, datetime]] = []
        left: list[tuple[str, str]] = []
        for root in roots:
            members = await tx.group(root)
            changed.update(members)
            events = await tx.events_of(members)
            if not events:
                removed.add(root)  # e.g. a customer who never had an event, split back off
                continue
            state = fold(events, now)
            previous = locked.get(root)
            # Memberships that still hold keep their "since": evaluate against the previous ones.
            state.segments = dict(previous.segments) if previous is not None else {}
            if len(self._segments):
                came, went = self._segments.evaluate(state, now)
            else:  # no segments defined: none to keep
                came, went = set(), set(state.segments)
                state.segments = {}
            entered.extend((name, root, now) for name in sorted(came))
            left.extend((name, root) for name in sorted(went))
            saved[root] = state
        if removed:
            await tx.delete_profiles(sorted(removed))
        if entered or left:
            await tx.update_memberships(entered, left)
        if saved:
            await tx.save_states(saved, now)
        return changed, set(saved)
