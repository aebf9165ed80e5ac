"""The bench's load shapes: open-loop send times, a scheduler that never waits for answers, closed-loop workers."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from cli.bench.schedule import run_closed_loop, run_open_loop, send_times

pytestmark = pytest.mark.unit


class VirtualClock:
    """Time that moves only when the scheduler sleeps (optionally overshooting, like a busy event loop)."""

    def __init__(self, overshoot: float = 0.0) -> None:
        self.now = 1000.0
        self.overshoot = overshoot

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)  # calls started before the sleep run now, at the current virtual time
        self.now += seconds + self.overshoot


def test_fixed_rate_sends_are_evenly_spaced_and_inside_the_window():
    times = list(send_times(200, 2.0))
    assert len(times) == 400
    assert times[0] == 0.0
    assert all(t < 2.0 for t in times)
    assert {round(b - a, 9) for a, b in zip(times, times[1:], strict=False)} == {0.005}


def test_poisson_arrivals_are_seeded_and_have_the_requested_mean_rate():
    first = list(send_times(500, 20.0, poisson=True, seed=7))
    assert first == list(send_times(500, 20.0, poisson=True, seed=7))
    assert first != list(send_times(500, 20.0, poisson=True, seed=8))
    assert all(0 < t < 20.0 for t in first)
    gaps = [b - a for a, b in zip(first, first[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(1 / 500, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 500, rel=0.1)  # exponential: stdev == mean


def test_a_rate_must_be_positive():
    with pytest.raises(ValueError):
        list(send_times(0, 1.0))


async def test_open_loop_sends_on_schedule_while_every_call_is_still_waiting():
    clock = VirtualClock()
    release = asyncio.Event()
    started: list[tuple[float, float]] = []  # (clock when started, scheduled instant)

    async def slow_call(scheduled: float) -> None:
        started.append((clock(), scheduled))
        await release.wait()  # no call returns before the whole schedule has been sent

    rate, duration = 100, 3.0
    runner = asyncio.ensure_future(
        run_open_loop(send_times(rate, duration), slow_call, clock=clock, sleep=clock.sleep)
    )
    while len(started) < rate * duration:
        await asyncio.sleep(0)
    assert not runner.done()  # it waits for the calls only after sending them all
    start = 1000.0
    for t in (0.5, 1.0, 2.0, 3.0):
        assert sum(1 for at, _ in started if at < start + t - 1e-9) == rate * t
    assert all(at == pytest.approx(scheduled) for at, scheduled in started)
    release.set()
    assert await runner == start


async def test_open_loop_behind_schedule_sends_at_once_and_keeps_the_scheduled_instants():
    clock = VirtualClock(overshoot=0.05)  # every sleep oversleeps by 50 ms
    seen: list[tuple[float, float]] = []

    async def call(scheduled: float) -> None:
        seen.append((clock(), scheduled))

    start = await run_open_loop(send_times(100, 1.0), call, clock=clock, sleep=clock.sleep)
    assert [scheduled for _, scheduled in seen] == pytest.approx([start + k / 100 for k in range(100)])
    assert all(at >= scheduled for at, scheduled in seen)
    assert max(at - scheduled for at, scheduled in seen) > 0  # some were late, and are measured from schedule


async def test_closed_loop_keeps_exactly_n_calls_in_flight_until_the_duration():
    in_flight = peak = calls = 0

    async def call() -> None:
        nonlocal in_flight, peak, calls
        in_flight += 1
        calls += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    await run_closed_loop(4, 0.2, call)
    assert peak == 4
    assert calls >= 4 * 2  # every worker went round more than once
    assert in_flight == 0
