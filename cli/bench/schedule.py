"""Load shapes: the open-loop send schedule and its scheduler, and the closed-loop worker pool.

Open loop: requests leave at pre-computed instants whether or not earlier ones have returned, and latency is
measured from the *scheduled* instant, so a stall anywhere (server, network, the generator itself) shows up in the
latencies instead of silently lowering the offered load (no coordinated omission).

Closed loop: N workers each send, wait for the answer, send again; stepping N up finds the maximum rate.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator


def send_times(rate: float, duration: float, *, poisson: bool = False, seed: int = 0) -> Iterator[float]:
    """Offsets (seconds from the start) of the sends of a `rate`/s open-loop run lasting `duration` seconds.

    Fixed rate: k / rate for k = 0, 1, ... Poisson: exponential gaps of mean 1/rate from a seeded generator (the
    same seed gives the same arrivals). Every offset is < duration.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    if poisson:
        rng = random.Random(seed)
        t = rng.expovariate(rate)
        while t < duration:
            yield t
            t += rng.expovariate(rate)
        return
    k = 0
    while (t := k / rate) < duration:
        yield t
        k += 1


async def run_open_loop(
    offsets: Iterator[float],
    fire: Callable[[float], Awaitable[None]],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> float:
    """Start `fire(scheduled_instant)` as a task at each offset; never waits for an earlier call to return.

    When the loop falls behind it sends the overdue requests at once (their latency still counts from their
    scheduled instant). Waits for every started call at the end (each call bounds itself with its deadline);
    returns the start instant (on `clock`).
    """
    start = clock()
    pending: set[asyncio.Task] = set()
    for offset in offsets:
        wait = start + offset - clock()
        if wait > 0:
            await sleep(wait)
        task = asyncio.ensure_future(fire(start + offset))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return start


async def run_closed_loop(
    concurrency: int,
    duration: float,
    call: Callable[[], Awaitable[None]],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> float:
    """`concurrency` workers call back to back until `duration` has passed; returns the start instant."""
    start = clock()
    end = start + duration

    async def worker() -> None:
        while clock() < end:
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return start
