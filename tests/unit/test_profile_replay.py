"""`nextbest profile replay`'s pacing: each transaction is sent when its scaled history time comes, in messages of
at most --batch events; speed 0 sends everything at once."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from nextbest.profile.v1 import profile_service_pb2 as pb

from cli.main import main
from cli.profile import paced
from libs.protoconv import to_timestamp

pytestmark = pytest.mark.unit

T0 = datetime(2025, 5, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def history(*offsets: timedelta) -> list[pb.Event]:
    return [pb.Event(event_id=f"e-{i}", occurred_at=to_timestamp(T0 + offset)) for i, offset in enumerate(offsets)]


async def sent(events: list[pb.Event], speed: float, batch: int) -> list[tuple[float, list[str]]]:
    """Each message's send time (seconds after the first) and event ids."""
    messages, started = [], time.monotonic()
    async for message in paced(events, speed, batch):
        messages.append((time.monotonic() - started, [event.event_id for event in message.events]))
    return messages


async def test_each_event_waits_for_its_scaled_time_and_events_due_together_share_a_message():
    hour_takes = 0.1  # one hour of history in a tenth of a second
    events = history(timedelta(0), HOUR, HOUR, 3 * HOUR)
    messages = await sent(events, speed=3600 / hour_takes, batch=100)
    assert [ids for _, ids in messages] == [["e-0"], ["e-1", "e-2"], ["e-3"]]
    # Never early (lateness is the event loop's, not asserted).
    assert messages[1][0] >= hour_takes * 0.95 and messages[2][0] >= 3 * hour_takes * 0.95


async def test_a_message_holds_at_most_batch_events():
    events = history(*[timedelta(seconds=i) for i in range(5)])
    messages = await sent(events, speed=1e9, batch=2)
    assert [ids for _, ids in messages] == [["e-0", "e-1"], ["e-2", "e-3"], ["e-4"]]


async def test_speed_zero_sends_everything_without_waiting():
    events = history(timedelta(0), 1000 * HOUR)
    messages = await sent(events, speed=0, batch=10)
    assert [ids for _, ids in messages] == [["e-0", "e-1"]]
    assert messages[0][0] < 1.0


async def test_no_events_no_messages():
    assert await sent([], speed=1.0, batch=10) == []


@pytest.mark.parametrize("speed", ["-1", "nan", "inf", "fast"])
def test_a_negative_or_non_finite_speed_is_refused_before_anything_is_read(speed, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "replay", "no-such-file.csv", "--speed", speed])
    assert exit_.value.code == 2 and "--speed" in capsys.readouterr().err
