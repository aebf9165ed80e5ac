"""Group commit for ingest: concurrent batches share transactions, partitioned by customer.

Applying each batch in its own transactions made concurrent producers queue on the row locks of the customers
they had in common: under a skewed load one hot customer is in nearly every batch, so every transaction waited for
the one before it. Here each accepted event goes to the lane its customer hashes to, and each lane applies one
transaction at a time with everything waiting for it (up to a limit). Lanes never lock each other's customers
(except through a merge, which the row locks still keep right), so they commit side by side, and a hot
customer's events from many batches are folded under one lock, once.

Guarantees are those of a single batch: an event is applied exactly once (the event-id insert decides; an id sent
twice at the same moment counts for the first submitter only), a caller learns how many of its events were newly
applied only after they committed, and a failed transaction fails every caller waiting on it (their retry skips
what other transactions committed). Work a lane has taken finishes even if its callers give up.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libs.errors import Unavailable

if TYPE_CHECKING:
    from services.profile.domain.service import EventRecord

#: Applies records in one transaction (retrying on lineage moves) and returns the ids it newly stored.
Apply = Callable[[Sequence["EventRecord"]], Awaitable[set[str]]]


@dataclass(slots=True)
class _Submission:
    records: list[EventRecord]
    done: asyncio.Future[int]
    #: The records this submission contributed to the transaction (an id already taken by another is left out).
    taken: list[EventRecord] = field(default_factory=list)


class IngestLanes:
    def __init__(self, apply: Apply, lanes: int, max_events: int) -> None:
        self._apply = apply
        self._max_events = max_events
        self._pending: list[list[_Submission]] = [[] for _ in range(lanes)]
        #: The task applying a lane's pending submissions while there are any (it ends when none is left).
        self._draining: list[asyncio.Task[None] | None] = [None] * lanes

    async def submit(self, records: Sequence[EventRecord]) -> int:
        """Apply `records` (distinct event ids); how many were newly stored, once all of them committed."""
        by_lane: dict[int, list[EventRecord]] = {}
        for record in records:
            lane = zlib.crc32(record.event.customer_id.encode()) % len(self._pending)
            by_lane.setdefault(lane, []).append(record)
        loop = asyncio.get_running_loop()
        submissions: list[_Submission] = []
        for lane, part in by_lane.items():
            for start in range(0, len(part), self._max_events):  # a big batch: one transaction per slice
                submissions.append(_Submission(part[start : start + self._max_events], loop.create_future()))
                self._pending[lane].append(submissions[-1])
            if self._draining[lane] is None:
                self._draining[lane] = asyncio.create_task(self._drain(lane), name=f"profile-ingest-lane-{lane}")
        # Every part is awaited even when one fails, so no failure goes unretrieved.
        results = await asyncio.gather(*(submission.done for submission in submissions), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(results)

    async def _drain(self, lane: int) -> None:
        pending = self._pending[lane]
        try:
            while pending:
                taken = [pending.pop(0)]
                size = len(taken[0].records)
                while pending and size + len(pending[0].records) <= self._max_events:
                    size += len(pending[0].records)
                    taken.append(pending.pop(0))
                await self._apply_together(taken)
        except BaseException:  # cancelled (the loop is stopping): whoever still waits must hear of it
            _fail(pending, Unavailable("the profile service is stopping; retry the batch"))
            pending.clear()
            raise
        finally:
            self._draining[lane] = None

    async def _apply_together(self, taken: Sequence[_Submission]) -> None:
        seen: set[str] = set()
        records: list[EventRecord] = []
        for submission in taken:
            for record in submission.records:
                if record.event.event_id not in seen:
                    seen.add(record.event.event_id)
                    submission.taken.append(record)
                    records.append(record)
        try:
            inserted = await self._apply(records)
        except asyncio.CancelledError:
            _fail(taken, Unavailable("the profile service is stopping; retry the batch"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this transaction
            _fail(taken, exc)
            return
        for submission in taken:
            if not submission.done.done():  # a caller that gave up has a cancelled future
                submission.done.set_result(sum(1 for record in submission.taken if record.event.event_id in inserted))


def _fail(pending: Sequence[_Submission], exc: BaseException) -> None:
    for submission in pending:
        if not submission.done.done():
            submission.done.set_exception(exc)
