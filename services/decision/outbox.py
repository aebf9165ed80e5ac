"""The outcome outbox: a background task forwards recorded outcomes to the profile service as OfferResponse events.

RecordOutcome only inserts the outcome (forwarded_at NULL) and wakes the task; the task sends pending rows in
batches and marks them forwarded. A failed send is retried on the next round; since the profile applies each
event id ("outcome:<outcome_id>") once, a resend after a lost reply has no second effect: exactly once.
Outcomes of an erased customer (a pseudonym, see `domain.lineage`) are settled with a note and never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from libs.cancellation import stop_task
from libs.errors import Unavailable
from libs.protoconv import utcnow
from services.decision.domain.lineage import ERASED_NOTE, is_pseudonym
from services.decision.gateways import DependencyError, ProfileGateway
from services.decision.storage import DecisionRepository

log = logging.getLogger("nextbest.decision.outbox")

#: Deadline of one IngestEvents call (background work: generous, but bounded).
SEND_TIMEOUT_SECONDS = 5.0


class OutcomeForwarder:
    def __init__(
        self, repository: DecisionRepository, profile: ProfileGateway, batch_size: int, interval_seconds: float
    ) -> None:
        self.repository = repository
        self.profile = profile
        self.batch_size = batch_size
        self.interval_seconds = interval_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-outcome-outbox")
        self._task.add_done_callback(self._report_crash)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """A new outcome is waiting: forward it now rather than at the next interval."""
        self._wake.set()

    async def stop(self) -> None:
        # Cancelling between a send and its mark only means a resend later, which the profile deduplicates.
        await stop_task(self._task)  # a crash was already logged by _report_crash; stopping goes on
        self._task = None

    async def forward_once(self) -> int:
        """Send one batch of pending outcomes; returns how many were settled."""
        pending = await self.repository.pending_outcomes(self.batch_size)
        if not pending:
            return 0
        # An outcome pseudonymised by an erasure while it waited has nobody to update: settled, never sent.
        notes = {p.outcome_id: ERASED_NOTE for p in pending if is_pseudonym(p.customer_id)}
        sending = [p for p in pending if p.outcome_id not in notes]
        rejected = await self.profile.ingest_outcomes(sending, SEND_TIMEOUT_SECONDS) if sending else {}
        # A rejected event is malformed for good: settle it with the reason instead of retrying it forever.
        for index, why in rejected.items():
            note = notes[sending[index].outcome_id] = f"rejected by profile: {why}"
            log.warning("outcome %s not forwarded: %s", sending[index].outcome_id, note)
        await self.repository.mark_forwarded([p.outcome_id for p in pending], utcnow(), notes)
        return len(pending)

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before reading: an outcome recorded during this round wakes the next one
            try:
                settled = await self.forward_once()
            except (DependencyError, Unavailable) as exc:
                log.warning("forwarding outcomes failed, retrying in %.1fs: %s", self.interval_seconds, exc)
                settled = 0
            if settled >= self.batch_size:
                continue  # a full batch: more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_seconds)

    @staticmethod
    def _report_crash(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("outcome outbox stopped", exc_info=task.exception())
