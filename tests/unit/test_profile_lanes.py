"""Group commit of ingest (`services.profile.domain.lanes.IngestLanes`) against a fake transaction: batches that
arrive while a lane is busy share its next transaction, lanes run side by side, every event is applied once and
counted for the first caller that sent it, a failure reaches every caller of the failed transaction, and a caller
that gives up does not stop the work it handed over."""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from libs.errors import Unavailable
from services.profile.domain import AcceptedEvent, EventRecord
from services.profile.domain import events as ev
from services.profile.domain.lanes import IngestLanes

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
T = TypeVar("T")


def record(event_id: str, customer_id: str) -> EventRecord:
    payload = ev.Purchase("o", (ev.OrderLine("SKU-1", 1, 10.0, 10.0),), 0.0, False, "pos", "")
    return EventRecord(AcceptedEvent(event_id, customer_id, NOW, "pos", payload), "purchase 1 line 10.00")


def batch(customer_id: str, *event_ids: str) -> list[EventRecord]:
    return [record(event_id, customer_id) for event_id in event_ids]


def customers_in_lane(lane: int, lanes: int, count: int = 1) -> list[str]:
    """Customer ids that `IngestLanes` sends to `lane` (it partitions by crc32 of the customer id)."""
    found = [f"c-{n}" for n in range(1000) if zlib.crc32(f"c-{n}".encode()) % lanes == lane]
    return found[:count]


class FakeTransactions:
    """Applies records as one transaction would: stores the ids it has not stored yet and returns those. `gate`
    holds every call until set; a call with a record of a customer in `failing` stores nothing and raises."""

    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.newly_stored: list[str] = []  # every id each time a call stored it: exactly-once means no repeats
        self.calls: list[list[str]] = []  # the event ids of each call, in the order given
        self.gate: asyncio.Event | None = None
        self.failing: set[str] = set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def apply(self, records: Sequence[EventRecord]) -> set[str]:
        ids = [r.event.event_id for r in records]
        self.calls.append(ids)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if any(r.event.customer_id in self.failing for r in records):
                raise Unavailable("database went away")  # rolled back: nothing stored
            new = {event_id for event_id in ids if event_id not in self.stored}
            self.stored |= new
            self.newly_stored.extend(sorted(new))
            return new
        finally:
            self.in_flight -= 1


async def turns_until(condition: Callable[[], bool], turns: int = 100) -> None:
    """Let other tasks run (no timing involved) until `condition` holds."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


async def answered(call: Awaitable[T]) -> T:
    """`call`'s result; a caller never answered fails the test instead of hanging the run."""
    return await asyncio.wait_for(call, timeout=5)


async def settled(*calls: Awaitable[int], return_exceptions: bool = False) -> list[int | BaseException]:
    return await answered(asyncio.gather(*calls, return_exceptions=return_exceptions))


async def arrive(lanes: IngestLanes, *batches: list[EventRecord]) -> list[asyncio.Task[int]]:
    """Submit each batch from its own task, in order; returns once every one of them is queued on its lane."""
    tasks = []
    for records in batches:
        tasks.append(asyncio.create_task(lanes.submit(records)))
        await asyncio.sleep(0)  # one turn: `submit` queues its records before its first await
    return tasks


@pytest.fixture
def fake() -> FakeTransactions:
    return FakeTransactions()


async def test_batches_arriving_while_a_transaction_is_under_way_are_applied_together_in_the_next(fake):
    fake.gate = asyncio.Event()
    lanes = IngestLanes(fake.apply, lanes=1, max_events=10)
    first = asyncio.create_task(lanes.submit(batch("c-1", "a-1", "a-2")))
    await turns_until(lambda: len(fake.calls) == 1)
    second, third = await arrive(lanes, batch("c-2", "b-1", "b-2"), batch("c-1", "c-1", "c-2", "c-3"))
    assert len(fake.calls) == 1  # the lane applies one transaction at a time
    fake.gate.set()
    assert await settled(first, second, third) == [2, 2, 3]
    assert fake.calls == [["a-1", "a-2"], ["b-1", "b-2", "c-1", "c-2", "c-3"]]
    assert fake.most_in_flight == 1


async def test_waiting_batches_are_gathered_only_up_to_max_events_per_transaction(fake):
    fake.gate = asyncio.Event()
    lanes = IngestLanes(fake.apply, lanes=1, max_events=4)
    first = asyncio.create_task(lanes.submit(batch("c-1", "a-1")))
    await turns_until(lambda: len(fake.calls) == 1)
    waiting = await arrive(
        lanes, batch("c-1", "b-1", "b-2"), batch("c-2", "c-1"), batch("c-3", "d-1", "d-2"), batch("c-4", "e-1")
    )
    fake.gate.set()
    assert await settled(first, *waiting) == [1, 2, 1, 2, 1]
    # In arrival order, each transaction as full as the next waiting batch allows.
    assert fake.calls == [["a-1"], ["b-1", "b-2", "c-1"], ["d-1", "d-2", "e-1"]]


async def test_lanes_apply_their_transactions_side_by_side(fake):
    fake.gate = asyncio.Event()
    lanes = IngestLanes(fake.apply, lanes=2, max_events=10)
    (in_lane_0,), (in_lane_1,) = customers_in_lane(0, 2), customers_in_lane(1, 2)
    first = asyncio.create_task(lanes.submit(batch(in_lane_0, "a-1")))
    other = asyncio.create_task(lanes.submit(batch(in_lane_1, "b-1")))
    await turns_until(lambda: len(fake.calls) == 2)
    assert fake.in_flight == 2  # both are under way: lane 1 does not wait for lane 0
    behind = (await arrive(lanes, batch(in_lane_0, "a-2")))[0]
    assert len(fake.calls) == 2  # lane 0 is busy: its next batch waits for it
    fake.gate.set()
    assert await settled(first, other, behind) == [1, 1, 1]
    assert fake.most_in_flight == 2
    assert fake.calls[2] == ["a-2"]


async def test_one_batch_for_customers_of_several_lanes_is_applied_per_lane_and_counted_once(fake):
    lanes = IngestLanes(fake.apply, lanes=2, max_events=10)
    (in_lane_0,), (in_lane_1,) = customers_in_lane(0, 2), customers_in_lane(1, 2)
    records = [*batch(in_lane_0, "a-1", "a-2"), *batch(in_lane_1, "b-1")]
    assert await answered(lanes.submit(records)) == 3
    assert sorted(fake.calls) == [["a-1", "a-2"], ["b-1"]]
    assert await answered(lanes.submit(records)) == 0  # all stored already


async def test_an_id_in_two_concurrent_batches_is_applied_once_and_counted_for_the_first_only(fake):
    fake.gate = asyncio.Event()
    lanes = IngestLanes(fake.apply, lanes=1, max_events=10)
    blocker = asyncio.create_task(lanes.submit(batch("c-9", "z-1")))
    await turns_until(lambda: len(fake.calls) == 1)
    first, second = await arrive(lanes, batch("c-1", "x-1", "x-2"), batch("c-1", "x-1", "x-3"))
    fake.gate.set()
    assert await settled(blocker, first, second) == [1, 2, 1]  # x-1 counts for the first submitter
    assert fake.calls[1] == ["x-1", "x-2", "x-3"]  # sent to the transaction once
    assert Counter(fake.newly_stored)["x-1"] == 1


async def test_a_failed_transaction_fails_each_of_its_callers_and_a_retry_applies_every_event_once(fake):
    fake.gate = asyncio.Event()
    lanes = IngestLanes(fake.apply, lanes=2, max_events=10)
    blocked, failing, bystander = customers_in_lane(0, 2, count=3)
    (elsewhere,) = customers_in_lane(1, 2)
    first = asyncio.create_task(lanes.submit(batch(blocked, "a-1")))
    await turns_until(lambda: len(fake.calls) == 1)
    fake.failing = {failing}
    doomed = batch(failing, "f-1", "f-2")
    sharing = batch(bystander, "s-1")  # in the same transaction as the failing customer, so it fails too
    other_lane = batch(elsewhere, "o-1", "o-2")
    waiting = await arrive(lanes, doomed, sharing, other_lane)
    fake.gate.set()
    results = await settled(first, *waiting, return_exceptions=True)
    assert results[0] == 1 and results[3] == 2
    assert isinstance(results[1], Unavailable) and isinstance(results[2], Unavailable)
    assert fake.stored == {"a-1", "o-1", "o-2"}  # the failed transaction stored nothing

    fake.failing = set()  # the database is back: the producers retry their whole batches
    assert await settled(*(lanes.submit(r) for r in (doomed, sharing, other_lane))) == [2, 1, 0]
    assert Counter(fake.newly_stored) == {event_id: 1 for event_id in ["a-1", "f-1", "f-2", "s-1", "o-1", "o-2"]}


async def test_a_batch_whose_part_in_one_lane_failed_fails_and_its_retry_counts_only_that_part(fake):
    lanes = IngestLanes(fake.apply, lanes=2, max_events=10)
    (in_lane_0,), (in_lane_1,) = customers_in_lane(0, 2), customers_in_lane(1, 2)
    records = [*batch(in_lane_0, "a-1"), *batch(in_lane_1, "b-1", "b-2")]
    fake.failing = {in_lane_1}
    with pytest.raises(Unavailable):
        await answered(lanes.submit(records))
    assert fake.stored == {"a-1"}  # the other lane's part committed
    fake.failing = set()
    assert await answered(lanes.submit(records)) == 2
    assert Counter(fake.newly_stored) == {"a-1": 1, "b-1": 1, "b-2": 1}


async def test_callers_that_give_up_do_not_stop_the_work_they_handed_over(fake):
    fake.gate = asyncio.Event()
    lanes = IngestLanes(fake.apply, lanes=1, max_events=10)
    under_way = asyncio.create_task(lanes.submit(batch("c-1", "a-1", "a-2")))
    await turns_until(lambda: len(fake.calls) == 1)
    queued, staying = await arrive(lanes, batch("c-2", "b-1"), batch("c-3", "c-1", "c-2"))
    under_way.cancel()  # e.g. its deadline passed: one caller while its transaction runs...
    queued.cancel()  # ...and one while its batch waits for the lane
    fake.gate.set()
    assert await answered(staying) == 2  # the other caller of the shared transaction still learns its count
    for gave_up in (under_way, queued):
        with pytest.raises(asyncio.CancelledError):
            await answered(gave_up)
    assert fake.calls == [["a-1", "a-2"], ["b-1", "c-1", "c-2"]]
    assert fake.stored == {"a-1", "a-2", "b-1", "c-1", "c-2"}
    assert await answered(lanes.submit(batch("c-1", "a-1", "a-2"))) == 0  # their retry finds everything applied


async def test_a_batch_bigger_than_max_events_is_applied_in_slices_of_at_most_max_events(fake):
    lanes = IngestLanes(fake.apply, lanes=1, max_events=3)
    records = [record(f"e-{n}", f"c-{n % 2}") for n in range(8)]
    assert await answered(lanes.submit(records)) == 8
    assert [len(call) for call in fake.calls] == [3, 3, 2]
    assert [event_id for call in fake.calls for event_id in call] == [f"e-{n}" for n in range(8)]


async def test_slices_follow_the_lanes_each_at_most_max_events(fake):
    lanes = IngestLanes(fake.apply, lanes=2, max_events=2)
    in_lane_0, in_lane_1 = customers_in_lane(0, 2, count=2), customers_in_lane(1, 2, count=2)
    records = [record(f"e-{n}", (in_lane_0 + in_lane_1)[n % 4]) for n in range(10)]
    assert await answered(lanes.submit(records)) == 10
    assert all(len(call) <= 2 for call in fake.calls)
    lane_of = {r.event.event_id: zlib.crc32(r.event.customer_id.encode()) % 2 for r in records}
    assert all(len({lane_of[event_id] for event_id in call}) == 1 for call in fake.calls)  # never across lanes
    assert Counter(event_id for call in fake.calls for event_id in call) == {f"e-{n}": 1 for n in range(10)}
