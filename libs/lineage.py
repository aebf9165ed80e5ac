"""Identity's lineage journal as its followers (profile, decision) read it: merges, unmerges and erasures.

Identity appends every merge, unmerge and erasure to a journal in commit order (`ListLineage`); each follower keeps
the seq of the last entry it applied. This module is the followers' shared view of one entry, and the conversion
of a `ListLineageResponse` page into it: no gRPC here (the enum names come from the message's own descriptor), so
domain code may use the types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from libs.errors import Unavailable

_KIND_PREFIX = "LINEAGE_KIND_"
#: Journal entries a follower asks for per ListLineage call.
LINEAGE_PAGE = 100


class LineageKind(StrEnum):
    MERGE = "merge"
    UNMERGE = "unmerge"
    FORGET = "forget"


@dataclass(frozen=True, slots=True)
class LineageEntry:
    """One entry of identity's lineage journal."""

    seq: int
    kind: LineageKind
    merge_id: str = ""
    survivor_id: str = ""
    merged_id: str = ""
    #: The erased customer (FORGET).
    customer_id: str = ""


def entries_from(messages: Iterable[Any], follower: str) -> list[LineageEntry]:
    """A `ListLineageResponse.entries` page as entries. An entry of a kind this code does not know stops the page
    with `Unavailable` (retried later): a follower must never skip one, so it waits at it until it is upgraded."""
    entries = []
    for message in messages:
        kind_field = message.DESCRIPTOR.fields_by_name["kind"].enum_type
        number = kind_field.values_by_number.get(message.kind)
        try:
            kind = LineageKind(number.name.removeprefix(_KIND_PREFIX).lower()) if number is not None else None
        except ValueError:
            kind = None
        if kind is None:
            raise Unavailable(f"lineage entry {message.seq} has a kind this {follower} service does not know; upgrade it")
        entries.append(
            LineageEntry(
                seq=message.seq,
                kind=kind,
                merge_id=message.merge_id,
                survivor_id=message.survivor_customer_id,
                merged_id=message.merged_customer_id,
                customer_id=message.customer_id,
            )
        )
    return entries


async def catch_up(
    cursor: Callable[[], Awaitable[int]],
    page: Callable[[int], Awaitable[list[LineageEntry]]],
    apply: Callable[[LineageEntry, int], Awaitable[bool]],
) -> int:
    """Apply every entry the journal has now; returns how many this process applied.

    `cursor()` reads the seq of the last entry applied, `page(after)` lists up to LINEAGE_PAGE entries after it, and
    `apply(entry, cursor)` applies one in the transaction that moves the cursor from `cursor` to the entry's seq,
    False when the cursor was no longer there: another replica got there first, so the cursor is read again. That
    is what makes every entry take effect exactly once across restarts and replicas.
    """
    applied = 0
    while True:
        at = await cursor()
        entries = await page(at)
        for entry in entries:
            if not await apply(entry, at):
                break  # another replica got there first: re-read the cursor
            at = entry.seq
            applied += 1
        else:
            if len(entries) < LINEAGE_PAGE:
                return applied
